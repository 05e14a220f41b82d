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
    # asyncio's debug lines (the selector in use) say nothing about GPUs or volumes.
    logging.getLogger("asyncio").setLevel(max(root.level, logging.INFO))
