"""The Celery app both sides share: JSON only, one queue per model, late acks, prefetch 1."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from kombu import Queue
from kombu.transport import redis as kombu_redis

from shared.redisconn import is_sentinel
from shared.schemas import Priority
from shared.settings import Settings

log = logging.getLogger(__name__)

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


_kombu_restore_unacked = kombu_redis.QoS.restore_unacked
_kombu_ack = kombu_redis.QoS.ack


def _broker_gone(qos: Any) -> bool:
    """Say whether kombu already closed this QoS's channel after losing the broker."""
    connection = getattr(qos.channel, "connection", None)
    return connection is None or connection.client is None


def _restore_unacked(self: Any, client: Any = None) -> Any:
    """kombu's QoS.restore_unacked, except on a channel whose connection is already closed."""
    if client is None and _broker_gone(self):
        # HACK: kombu 5.7 closes a channel after its connection when the broker is lost (say, the
        # Redis master dies in a Sentinel failover); restoring then raises AttributeError, which
        # Celery reports as an unrecoverable error, and the worker stops consuming. The messages
        # stay in kombu's unacked hash, which kombu restores after its visibility_timeout; a
        # duplicate delivery is then refused by the job store (a worker starts only queued jobs).
        log.warning("broker lost: %d unacknowledged message(s) left to kombu's restore", len(self._delivered))
        self._delivered.clear()
        return None
    return _kombu_restore_unacked(self, client)


def _ack(self: Any, delivery_tag: Any) -> Any:
    """kombu's QoS.ack, except on a channel whose connection is already closed."""
    if _broker_gone(self):
        # HACK: the same closed channel as in _restore_unacked, met by the ack of a job that ended
        # while the broker was failing over. The job's outcome is already stored, so a redelivery
        # of its message is refused by the job store; dropping the ack keeps the worker consuming.
        log.warning("broker lost: ack of %s left to kombu's restore", delivery_tag)
        self._delivered.pop(delivery_tag, None)
        return None
    return _kombu_ack(self, delivery_tag)


def _recover_from_full_redis() -> None:
    """Count Redis's out-of-memory refusal among the broker errors a worker recovers from."""
    # HACK: kombu files OutOfMemoryError (a ResponseError) as a channel error; Celery calls that
    # unrecoverable and the worker stops consuming for good when Redis reaches maxmemory. As a
    # connection error, the consumer reconnects and goes on once memory is freed.
    if redis.exceptions.OutOfMemoryError not in kombu_redis.Transport.connection_errors:
        kombu_redis.Transport.connection_errors += (redis.exceptions.OutOfMemoryError,)


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app for these settings; no result backend (the job store holds results)."""
    # Idempotent; see _restore_unacked and _ack.
    kombu_redis.QoS.restore_unacked = _restore_unacked  # type: ignore[method-assign]
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    _recover_from_full_redis()
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
