"""`genq keys ...`: create, list and revoke API keys, set tenants' limits, read usage, in Redis directly.

They need no running API: every API process sees a change within GENQ_KEY_CACHE_S (at most 2 s).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import socket
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from shared.keystore import TENANT_NAME, KeyStore, TenantLimits, parse_duration


def _store() -> tuple[Any, KeyStore]:
    from shared.redisconn import connect
    from shared.settings import Settings

    settings = Settings()
    # The audit line goes to stderr, so that stdout holds only what scripts read (the key).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("genq: %(message)s"))
    audit = logging.getLogger("genq.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    audit.propagate = False
    return settings, KeyStore(connect(settings.redis_url, settings.redis_sentinel_master))


def _actor() -> str:
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


def _tenant(value: str) -> str:
    if not TENANT_NAME.match(value):
        raise argparse.ArgumentTypeError("a tenant name is 1-64 letters, digits, '.', '_' or '-'")
    return value


def _duration(value: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def create(args: argparse.Namespace) -> int:
    """Create a key in Redis (or, with --file, a static one in a keys file); print it alone first."""
    if args.file:
        from api.auth import add_key

        if args.admin or args.expires_in or args.label:
            print("genq: --file makes a static key: no --admin, --expires-in or --label", file=sys.stderr)
            return 2
        key = add_key(Path(args.file), args.tenant)
        print(key)
        print(
            f"genq: static key for tenant {args.tenant!r} created; only its hash is stored in {args.file}. "
            f"Shown once: keep it now. The API reads the file when GENQ_API_KEYS_FILE={args.file} is set.",
            file=sys.stderr,
        )
        return 0
    _, store = _store()
    key, record = store.create(args.tenant, args.label or "", args.expires_in, args.admin, _actor())
    print(key)
    print(
        f"genq: key {record.id} for tenant {record.tenant!r} created (expires {_when(record.expires)}); "
        "only its hash is stored. Shown once: keep it now.",
        file=sys.stderr,
    )
    return 0


def list_keys(args: argparse.Namespace) -> int:
    """Print keys as a table or JSON: never a key or its hash."""
    _, store = _store()
    records = [r.public() for r in store.records(args.tenant)]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    columns = ["id", "tenant", "label", "prefix", "state", "admin", "created", "expires", "last_used"]
    rows = [
        [r["id"], r["tenant"], r["label"] or "-", r["prefix"] + "…", r["state"], "yes" if r["admin"] else "-"]
        + [_when(r[c]) for c in ("created", "expires", "last_used")]
        for r in records
    ]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def revoke(args: argparse.Namespace) -> int:
    """Revoke a key by id."""
    _, store = _store()
    record = store.revoke(args.key_id, _actor())
    if record is None:
        print(f"genq: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(
        f"genq: key {record.id} of tenant {record.tenant!r} revoked at {_when(record.revoked)}",
        file=sys.stderr,
    )
    return 0


def limits(args: argparse.Namespace) -> int:
    """Show a tenant's limits; set those given (a number, 0 = unlimited; 'default' clears one)."""
    from api.admin import limits_body

    settings, store = _store()
    changes = {n: getattr(args, n) for n in TenantLimits.names() if getattr(args, n) is not None}
    if args.reset:
        changes = dict.fromkeys(TenantLimits.names())
    if changes:
        own = store.set_limits(args.tenant, {k: None if v < 0 else v for k, v in changes.items()}, _actor())
    else:
        own = store.limits(args.tenant, fresh=True)
    print(json.dumps(limits_body(settings, args.tenant, own).model_dump(mode="json"), indent=2))
    return 0


def show_usage(args: argparse.Namespace) -> int:
    """Print a tenant's usage from --start to --end (UTC dates) as JSON."""
    from shared.usage import today

    _, store = _store()
    start, end = args.start or today(), args.end or today()
    if start > end:
        print("genq: --start must not follow --end", file=sys.stderr)
        return 2
    print(json.dumps(store.usage(args.tenant, start, end), indent=2))
    return 0


def _limit(value: str) -> int:
    if value == "default":
        return -1  # cleared: the global default applies again
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("a limit is a number >= 0 (0 = unlimited) or 'default'")
    return number


def _guarded(command: Any) -> Any:
    """Return command, turning a Redis failure into one line on stderr and exit status 1."""
    import redis

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except redis.RedisError as exc:
            print(f"genq: cannot reach Redis (GENQ_REDIS_URL): {exc}", file=sys.stderr)
            return 1

    return run


def add_commands(sub: Any) -> None:
    """Register `genq keys create|list|revoke|limits|usage` on the CLI's subparsers."""
    p = sub.add_parser("keys", help="manage API keys, tenants' limits and usage (in Redis)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("create", help="create a key for a tenant; prints it once, stores only its hash")
    k.add_argument("--tenant", required=True, type=_tenant)
    k.add_argument("--expires-in", type=_duration, help="e.g. 90d, 12h, 30m (default: never)")
    k.add_argument("--label", help="a note to recognise the key by (shown by list)")
    k.add_argument(
        "--admin", action="store_true", help="may use /v1/admin (keys, limits, any tenant's usage)"
    )
    k.add_argument("--file", help="instead: append a static key to this keys file (GENQ_API_KEYS_FILE)")
    k.set_defaults(func=_guarded(create))
    k = keys_sub.add_parser("list", help="list keys: id, tenant, label, times, prefix; never the key")
    k.add_argument("--tenant", type=_tenant)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=_guarded(list_keys))
    k = keys_sub.add_parser("revoke", help="revoke a key by id; refused everywhere within 2 s")
    k.add_argument("key_id")
    k.set_defaults(func=_guarded(revoke))
    k = keys_sub.add_parser("limits", help="show or set a tenant's limits (override the global defaults)")
    k.add_argument("--tenant", required=True, type=_tenant)
    k.add_argument("--requests-per-minute", dest="requests_per_minute", type=_limit, metavar="N|default")
    k.add_argument("--max-queued", dest="max_queued", type=_limit, metavar="N|default")
    k.add_argument("--tokens-per-day", dest="tokens_per_day", type=_limit, metavar="N|default")
    k.add_argument("--reset", action="store_true", help="clear every override")
    k.set_defaults(func=_guarded(limits))
    k = keys_sub.add_parser("usage", help="a tenant's usage per UTC day and per key, as JSON")
    k.add_argument("--tenant", required=True, type=_tenant)
    k.add_argument("--start", type=date.fromisoformat, help="YYYY-MM-DD (default: today, UTC)")
    k.add_argument("--end", type=date.fromisoformat, help="YYYY-MM-DD (default: today, UTC)")
    k.set_defaults(func=_guarded(show_usage))
