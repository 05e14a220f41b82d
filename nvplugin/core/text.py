"""Untrusted text made safe to echo: one escaper for every page, error line and log line that
quotes a name, a device item or a file name (they must not add cells, lines or terminal codes);
and untrusted JSON parsed with every failure a ValueError (`parse_json`)."""

from __future__ import annotations

import json
import re
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


# Deeper than any document nvplugin reads (the plugin protocol and state.json need 3 levels).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def nesting_depth(raw: bytes | str) -> int:
    """How deep `[`/`{` nest in a JSON text, strings skipped (malformed text: a best guess,
    json.loads then says what is wrong)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(raw: bytes | str) -> Any:
    """Untrusted JSON, with every way it can fail as a ValueError that says what was wrong.

    `json.loads` raises RecursionError for nesting deeper than Python's recursion limit and a
    bare ValueError for integers longer than `sys.get_int_max_str_digits()`: both fit easily
    in a 64 KiB request, and neither is a JSONDecodeError.
    """
    depth = nesting_depth(raw)
    if depth > MAX_JSON_DEPTH:
        # Refused before json.loads recurses: a RecursionError, even caught, leaves CPython 3.11's
        # AST recursion bookkeeping off for the rest of the thread (gh-106905).
        raise ValueError(f"nested {depth} levels deep (at most {MAX_JSON_DEPTH})")
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

