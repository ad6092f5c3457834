"""The Celery app both sides share: JSON only, one queue per model, late acks, prefetch 1."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared import kombufix
from shared.redisconn import is_sentinel
from shared.schemas import Priority
from shared.settings import Settings

TASK_GENERATE = "genq.generate"  # the one task: run the job whose id it carries
# kombu's Redis transport keeps one list per priority step and pops lower numbers first.
PRIORITY_STEPS = [0, 9]
PRIORITIES = {Priority.INTERACTIVE: 0, Priority.BATCH: 9}


def queue_lists(queue: str) -> list[str]:
    """Return the Redis lists that hold a queue's waiting messages, one per priority step."""
    return [queue if step == 0 else f"{queue}\x06\x16{step}" for step in PRIORITY_STEPS]


def enqueue(app: Celery, queue: str, job_id: str, priority: Priority, attempt: int = 0) -> None:
    """Publish the message that makes a worker run the job (the job record must exist first)."""
    app.send_task(
        TASK_GENERATE,
        args=[job_id],
        queue=queue,
        priority=PRIORITIES[priority],
        task_id=f"{job_id}.{attempt}",
    )


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for these settings; no result backend (the job store holds results)."""
    kombufix.install()
    app = Celery("genq", broker=settings.redis_url)
    transport: dict[str, object] = {"visibility_timeout": 3600, "priority_steps": PRIORITY_STEPS}
    if is_sentinel(settings.redis_url):  # kombu asks the Sentinels for this master
        transport["master_name"] = settings.redis_sentinel_master
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
        # visibility_timeout (seconds) is Celery's default; genq's own leases requeue a dead
        # worker's jobs long before it, and duplicate deliveries are refused by the job store.
        broker_transport_options=transport,
    )
    return app
