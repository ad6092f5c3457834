"""kombu's Redis transport, patched: closed channels, Redis full, and acks sent in batches.

Each patch is a HACK on kombu 5.7's internals, installed by make_celery (idempotent); the
comments say what kombu does without it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger(__name__)

_kombu_restore_unacked = kombu_redis.QoS.restore_unacked
_kombu_restore_unacked_once = kombu_redis.QoS.restore_unacked_once
_kombu_ack = kombu_redis.QoS.ack

# Acks taken on the event loop and not yet sent: QoS → delivery tags. Only the loop's thread
# touches it (acks from any other thread go out at once, as kombu sends them).
_unsent: dict[Any, list[Any]] = {}
sent = {"acks": 0, "round_trips": 0}  # the batched acks sent (the worker logs them when it stops)


def _broker_gone(qos: Any) -> bool:
    """Say whether kombu already closed this QoS's channel after losing the broker."""
    connection = getattr(qos.channel, "connection", None)
    return connection is None or connection.client is None


def _restore_unacked(self: Any, client: Any = None) -> Any:
    """kombu's QoS.restore_unacked, after sending the acks not yet sent, and never on a channel
    whose connection is already closed."""
    _send_acks(self)  # a closing channel's acked messages must not be restored
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


def _restore_unacked_once(self: Any, stderr: Any = None) -> Any:
    """kombu's close-time restore, after sending the acks not yet sent."""
    # kombu calls restore_unacked from here only while it holds unacked messages: a channel
    # that closes with every message acked would otherwise never send the kept acks.
    _send_acks(self)
    return _kombu_restore_unacked_once(self, stderr)


def _ack(self: Any, delivery_tag: Any) -> Any:
    """Ack a message: on the event loop, batched with the loop turn's other acks; else at once."""
    if _broker_gone(self):
        # HACK: the same closed channel as in _restore_unacked, met by the ack of a job that ended
        # while the broker was failing over. The job's outcome is already stored, so a redelivery
        # of its message is refused by the job store; dropping the ack keeps the worker consuming.
        log.warning("broker lost: ack of %s left to kombu's restore", delivery_tag)
        self._delivered.pop(delivery_tag, None)
        return None
    hub = get_event_loop()
    if hub is None or getattr(hub, "_loop_thread", None) != threading.get_ident():
        return _kombu_ack(self, delivery_tag)
    # HACK: kombu sends each ack as its own pipeline (ZREM + HDEL) from a fresh client. Celery
    # runs acks on its event loop, and the rows of a batch end together, so a loop turn often
    # acks many; they leave together just before the loop next polls (its on_tick callbacks).
    # The bookkeeping is done now, so the prefetch window frees at once. An ack is only ever
    # later, never earlier: the job's outcome is already stored. Should the process die before
    # sending it, kombu restores the message after its visibility_timeout, and the job store
    # refuses the redelivery (the job has ended).
    virtual.QoS.ack(self, delivery_tag)
    _unsent.setdefault(self, []).append(delivery_tag)
    hub.on_tick.add(_send_all_acks)  # a set: added once
    return None


def _send_all_acks() -> None:
    """Send every ack the event loop has taken since it last polled (one pipeline per channel)."""
    for qos in list(_unsent):
        _send_acks(qos)


def _send_acks(qos: Any) -> None:
    """Send one channel's acks not yet sent; a failure is logged, never raised into the loop."""
    tags = _unsent.pop(qos, None)
    if not tags or _broker_gone(qos):
        return  # lost with the broker: kombu's visibility_timeout restores them (refused, as above)
    try:
        with qos.pipe_or_acquire() as pipe:
            pipe.zrem(qos.unacked_index_key, *tags).hdel(qos.unacked_key, *tags).execute()
        sent["acks"] += len(tags)
        sent["round_trips"] += 1
    except Exception as exc:  # raised into the loop, it would stop the consumer
        log.warning("could not ack %d message(s), left to kombu's restore: %s", len(tags), exc)


def _recover_from_full_redis() -> None:
    """Count Redis's out-of-memory refusal among the broker errors a worker recovers from."""
    # HACK: kombu files OutOfMemoryError (a ResponseError) as a channel error; Celery calls that
    # unrecoverable and the worker stops consuming for good when Redis reaches maxmemory. As a
    # connection error, the consumer reconnects and goes on once memory is freed.
    if redis.exceptions.OutOfMemoryError not in kombu_redis.Transport.connection_errors:
        kombu_redis.Transport.connection_errors += (redis.exceptions.OutOfMemoryError,)


def install() -> None:
    """Patch kombu's Redis transport (idempotent)."""
    kombu_redis.QoS.restore_unacked = _restore_unacked  # type: ignore[method-assign]
    kombu_redis.QoS.restore_unacked_once = _restore_unacked_once  # type: ignore[method-assign]
    kombu_redis.QoS.ack = _ack  # type: ignore[method-assign]
    _recover_from_full_redis()
