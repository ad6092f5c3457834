"""The API's operator commands: `genq api` (gunicorn) and `genq keys ...` (api/keys_cli.py)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _api(args: argparse.Namespace) -> int:
    from api.serving import GRACEFUL_TIMEOUT_S, raise_open_files, worker_args
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
        str(GRACEFUL_TIMEOUT_S),
        "--access-logfile",
        "-",
        *(["--logger-class", "api.gunicorn_logger.JsonLogger"] if settings.log_format == "json" else []),
        "api.app:create_app()",
    ]
    os.execv(sys.executable, argv)
    return 0  # not reached


def add_commands(sub: Any) -> None:
    """Add `api` and `keys` to the genq command's subparsers (imports Flask only when they run)."""
    p = sub.add_parser("api", help="run the HTTP API under gunicorn")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_api)

    from api import keys_cli

    keys_cli.add_commands(sub)  # genq keys create|list|revoke|limits|usage: Redis directly, no API needed
