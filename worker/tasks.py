"""The Celery task: thin; it hands the job id to the worker's runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from shared.celery_app import TASK_GENERATE

if TYPE_CHECKING:
    from worker.runtime import Runtime


def register_tasks(app: Celery, runtime: Runtime) -> None:
    """Bind the generate task of this Celery app to the runtime that holds the loaded model."""

    @app.task(name=TASK_GENERATE, acks_late=True, ignore_result=True)
    def generate(job_id: str) -> None:
        """Run one job; its result goes to the job store, the message is acked after that."""
        runtime.run_job(job_id)
