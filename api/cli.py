"""The API's operator commands: `genq api` (gunicorn) and `genq keys create`."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

TENANT_NAME = r"[A-Za-z0-9._-]{1,64}"  # what a tenant may be called (it appears in keys and metrics)


def _api(args: argparse.Namespace) -> int:
    from api.serving import raise_open_files, worker_args
    from shared.settings import Settings

    settings = Settings()
    raise_open_files()  # each open stream or long poll is a socket
    host = args.host or settings.host
    port = args.port or settings.port
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(settings.api_workers),
        *worker_args(settings),
        "--timeout",
        str(settings.max_wait + 30),  # a long poll must not look like a hung worker
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        *(["--logger-class", "api.gunicorn_logger.JsonLogger"] if settings.log_format == "json" else []),
        "api.app:create_app()",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached


def _keys_create(args: argparse.Namespace) -> int:
    from api.auth import add_key

    if not re.fullmatch(TENANT_NAME, args.tenant):
        print("genq: a tenant name is 1-64 letters, digits, '.', '_' or '-'", file=sys.stderr)
        return 2
    path = Path(args.file or os.environ.get("GENQ_API_KEYS_FILE") or ".genq/api-keys")
    key = add_key(path, args.tenant)
    print(key)
    print(
        f"genq: key for tenant {args.tenant!r} created; only its hash is stored in {path}. "
        f"Shown once: keep it now. The API reads the file when GENQ_API_KEYS_FILE={path} is set.",
        file=sys.stderr,
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add `api` and `keys` to the genq command's subparsers (imports Flask only when they run)."""
    p = sub.add_parser("api", help="run the HTTP API under gunicorn")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_api)

    p = sub.add_parser("keys", help="manage API keys")
    keys_sub = p.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("create", help="create a key for a tenant; prints it once, stores only its hash")
    k.add_argument("--tenant", required=True)
    k.add_argument("--file", help="keys file (default: GENQ_API_KEYS_FILE, else .genq/api-keys)")
    k.set_defaults(func=_keys_create)
