"""Untrusted text made safe to echo: one escaper for every page, error line and log line that
quotes a name, a device item or a file name (they must not add cells, lines or terminal codes);
and untrusted JSON parsed with every failure a ValueError (`parse_json`)."""

from __future__ import annotations

import json
import sys
import unicodedata
from typing import Any

# Control, format (bidi overrides), surrogate and line/paragraph separator characters.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def escape_controls(text: str, *, backslash: bool = True) -> str:
    """Backslash-escape control, format and separator characters as `\\xNN`/`\\uNNNN` (and
    backslash itself, unless `backslash` is False because `text` is already escaped)."""
    out: list[str] = []
    for char in text:
        if char == "\\" and backslash:
            out.append("\\\\")
        elif unicodedata.category(char) in _UNSAFE_CATEGORIES:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def quote_untrusted(text: str, limit: int) -> str:
    """`text` for an error line: cut to `limit` characters (`...` marks the cut), then escaped."""
    return escape_controls(text[:limit] + ("..." if len(text) > limit else ""))


def parse_json(raw: bytes | str) -> Any:
    """Untrusted JSON, with every way it can fail as a ValueError that says what was wrong.

    `json.loads` raises RecursionError for nesting deeper than Python's recursion limit and a
    bare ValueError for integers longer than `sys.get_int_max_str_digits()`: both fit easily
    in a 64 KiB request, and neither is a JSONDecodeError.
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"nested deeper than {sys.getrecursionlimit()} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(str(err)) from None
    except ValueError as err:
        if "digits" in str(err):
            raise ValueError(f"a number of more than {sys.get_int_max_str_digits()} digits"
                             ) from None
        raise

