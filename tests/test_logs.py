"""Log lines: 1.0's prefix, one line per event, malformed requests without tracebacks."""

from __future__ import annotations

import io
import logging
import re

from aiohttp.http_exceptions import BadHttpMessage

from nvplugin.core import logs


def test_prefix_and_one_line_per_event():
    out = io.StringIO()
    logs.setup("nvidia-docker-plugin", "info", out)
    logging.getLogger("nvplugin.test").info("two\nlines")
    assert re.fullmatch(r"nvidia-docker-plugin \| \d{4}/\d\d/\d\d \d\d:\d\d:\d\d two\\nlines\n",
                        out.getvalue())


def test_a_request_aiohttp_cannot_parse_is_one_line_without_a_traceback():
    out = io.StringIO()
    logs.setup("nvidia-docker-plugin", "info", out)
    try:
        raise BadHttpMessage("Invalid URL")
    except BadHttpMessage:
        logging.getLogger("aiohttp.server").error("Error handling request", exc_info=True)
    text = out.getvalue()
    assert "Traceback" not in text and text.count("\n") == 1
    assert "Rejected a malformed HTTP request: Invalid URL" in text


def test_other_errors_keep_their_traceback_folded_into_the_line():
    out = io.StringIO()
    logs.setup("nvidia-docker-plugin", "info", out)
    try:
        raise ValueError("bug")
    except ValueError:
        logging.getLogger("aiohttp.server").error("Error handling request", exc_info=True)
    assert "Traceback" in out.getvalue() and out.getvalue().count("\n") == 1
