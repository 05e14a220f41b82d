"""Logging set-up for the two programs, in 1.0's one-line format.

1.0 printed `<argv0> | YYYY/MM/DD HH:MM:SS <message>` to stderr; journald and existing log
scrapers key on that prefix, so it is kept. Library modules only call `logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

DATE_FORMAT = "%Y/%m/%d %H:%M:%S"


class _OneLineFormatter(logging.Formatter):
    """Keeps every record on one line, so each event is one journal entry."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\r", "\\r").replace("\n", "\\n")


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a full traceback for every request it cannot parse (a bad URL, junk on the
    socket); that is the client's mistake, not ours, so it becomes one line without one."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = "Rejected a malformed HTTP request: %s", (error.message,)
            record.exc_info, record.exc_text, record.levelno = None, None, logging.WARNING
            record.levelname = "WARNING"
        return True


def setup(program: str, level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_OneLineFormatter(f"{program} | %(asctime)s %(message)s", DATE_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is noise for a local daemon; 1.0 had none.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestFilter())
    # asyncio's debug lines (the selector in use) say nothing about GPUs or volumes.
    logging.getLogger("asyncio").setLevel(max(root.level, logging.INFO))
