"""Gunicorn's own log lines (start-up, workers, access) as JSON on stdout, like the rest of genq."""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.glogging import Logger

from shared.logs import JsonFormatter


class JsonLogger(Logger):
    """Gunicorn's logger with genq's JSON formatter; an access line carries its figures as fields."""

    def setup(self, cfg: Any) -> None:
        """Let gunicorn make its handlers, then give them the JSON format and stdout."""
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(JsonFormatter())
                    if getattr(handler, "stream", None) is sys.stderr:
                        handler.setStream(sys.stdout)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        """Log one request: method, path, status, bytes, ms; never its headers (they hold API keys)."""
        if not self.access_log_enabled:
            return
        status = str(resp.status).split(None, 1)[0]
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        fields = {
            "method": method,
            "path": path,
            "status": int(status) if status.isdigit() else status,
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "remote": environ.get("REMOTE_ADDR"),
        }
        self.access_log.info("%s %s %s", method, path, status, extra=fields)
