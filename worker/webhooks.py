"""Send due webhook deliveries from Redis, with retries; runs in every worker beside the engine.

A job's state change schedules its delivery in Redis (shared/transitions.py), and so does the state
change of a job that starts or ends its batch, so the engine never waits on a receiver. Here, a
sender takes one due delivery at a time under a lease (if this worker dies mid-POST, the delivery
comes due again for any worker), POSTs it, and either settles it or schedules the next attempt
after an exponential backoff.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import redis

from shared import keys, webhooks
from shared.batchstore import BatchStore
from shared.jobstore import JobStore
from shared.settings import Settings

log = logging.getLogger(__name__)

SENDERS = 4  # sender threads per worker: one slow receiver holds up only one of them
POLL_S = 0.25  # how often an idle sender looks for due deliveries, in seconds
MAX_BACKOFF_S = 3600.0  # longest wait between two attempts, in seconds
MAX_ERROR_CHARS = 200  # of last_error, as stored on the job
USER_AGENT = "genq-webhooks/1"

# Take the earliest due delivery and push its due time past the lease, so that no other sender
# takes it meanwhile and a sender that dies leaves it to be taken again. KEYS: due zset.
# ARGV: now, lease expiry.
TAKE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], ARGV[2], due[1])
return due[1]
"""

# Settle an attempt, once: drop the delivery, maybe schedule the next attempt, and note how it
# went on the job or batch (unless the record has expired). KEYS: due zset, job or batch.
# ARGV: delivery, next delivery ('' = none), its due time, job field, status JSON.
SETTLE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], ARGV[4], ARGV[5]) end
return 1
"""


class Outcome:
    """How one attempt went: delivered, or an error and whether another attempt could help."""

    def __init__(self, delivered: bool, error: str | None = None, final: bool = False) -> None:
        self.delivered = delivered
        self.error = error
        self.final = final


class WebhookSender:
    """Takes due deliveries from Redis and POSTs them, signed; several may run per worker."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.r = store.r
        self.settings = settings
        # Longer than any one attempt (resolve, connect, send, read) may take.
        self.lease_s = 4 * settings.webhook_timeout_s + 30
        self._take = self.r.register_script(TAKE)
        self._settle = self.r.register_script(SETTLE)

    def run(self, stop: threading.Event) -> None:
        """Send deliveries as they come due until stop is set; Redis outages are logged and waited out."""
        while not stop.is_set():
            try:
                if self.send_one():
                    continue
            except redis.RedisError as exc:
                log.warning("webhook sender: %s", exc)
            except Exception:  # a sender must outlive any one delivery; its lease brings it back
                log.exception("webhook sender: unexpected error")
            stop.wait(POLL_S)

    def send_one(self, now: float | None = None) -> bool:
        """Make one attempt at the earliest due delivery; return False when none is due."""
        now = time.time() if now is None else now
        member = self._take(keys=[keys.WEBHOOKS_DUE], args=[repr(now), repr(now + self.lease_s)])
        if not member:
            return False
        try:
            delivery = json.loads(member)
            kind = "batch" if "batch_id" in delivery else "job"
            target, event, attempt = delivery[f"{kind}_id"], delivery["event"], int(delivery["attempt"])
        except (ValueError, KeyError, TypeError):
            log.error("webhook sender: dropping a malformed delivery %r", member[:200])
            self.r.zrem(keys.WEBHOOKS_DUE, member)
            return True
        outcome = self._attempt(delivery)
        retry = not outcome.delivered and not outcome.final and attempt < self.settings.webhook_max_attempts
        status = "delivered" if outcome.delivered else "pending" if retry else "failed"
        after = min(self.settings.webhook_backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        following = json.dumps({**delivery, "attempt": attempt + 1}, sort_keys=True) if retry else ""
        record = {"status": status, "attempts": attempt, "last_error": outcome.error}
        self._settle(
            keys=[keys.WEBHOOKS_DUE, keys.batch(target) if kind == "batch" else keys.job(target)],
            args=[member, following, repr(time.time() + after), f"webhook:{event}", json.dumps(record)],
        )
        log.info(
            "webhook %s of %s %s to %s: attempt %d %s%s",
            event,
            kind,
            target,
            urlsplit(delivery.get("url", "")).hostname,  # the host only: paths may hold tokens
            attempt,
            status,
            f" ({outcome.error})" if outcome.error else "",
        )
        return True

    def _attempt(self, delivery: dict[str, Any]) -> Outcome:
        """POST the job or batch as it is now, signed; never raises for the receiver's faults."""
        body = self._body(delivery)
        if body is None:
            kind = "batch" if "batch_id" in delivery else "job"
            return Outcome(False, f"the {kind}'s record has expired", final=True)
        if not self.settings.webhook_secret:  # another worker, configured, may send it
            return Outcome(False, "GENQ_WEBHOOK_SECRET is not set on this worker")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            webhooks.EVENT_HEADER: delivery["event"],
            webhooks.DELIVERY_HEADER: delivery.get("id", ""),
            webhooks.SIGNATURE_HEADER: webhooks.sign(self.settings.webhook_secret, body),
        }
        try:
            status = webhooks.post(
                delivery["url"],
                body,
                headers,
                self.settings.webhook_timeout_s,
                self.settings.webhook_allow_private,
            )
        except webhooks.RefusedURL as exc:  # e.g. its DNS now answers a private address: never sent
            return Outcome(False, f"refused: {exc}"[:MAX_ERROR_CHARS], final=True)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
        if 200 <= status < 300:
            return Outcome(True)
        return Outcome(False, f"HTTP {status}")

    def _body(self, delivery: dict[str, Any]) -> bytes | None:
        """Return what a delivery sends: the job, or the batch without its results, plus the event."""
        exclude = {"webhook_deliveries"}
        if "batch_id" in delivery:
            batches = BatchStore(self.store)
            batch = batches.get(delivery["batch_id"], None)
            if batch is None:
                return None
            # Results can run to megabytes: receivers fetch them from /v1/batches/{id}/results.
            public = batches.public(batch, with_results=False)
            data = public.model_dump(mode="json", exclude=exclude | {"results"})
        else:
            rec = self.store.record(delivery["job_id"])
            if rec is None:
                return None
            data = rec.public().model_dump(mode="json", exclude=exclude)
        return json.dumps({**data, "event": delivery["event"]}).encode()
