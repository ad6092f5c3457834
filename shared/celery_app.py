"""The Celery app both sides share: JSON only, one queue per model, late acks, prefetch 1."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.settings import Settings

TASK_GENERATE = "genq.generate"  # the one task: run the job whose id it carries


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for these settings; no result backend (the job store holds results)."""
    app = Celery("genq", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # a pickled message is refused, never executed
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,  # ack only after the result is stored
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(m.queue) for m in settings.models],
        task_default_queue=settings.models[0].queue,
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep reconnecting while Redis is away
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_transport_options={"visibility_timeout": 3600},  # seconds, Celery's default
    )
    return app
