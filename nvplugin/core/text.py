"""Untrusted text made safe to echo: one escaper for every page, error line and log line that
quotes a name, a device item or a file name (they must not add cells, lines or terminal codes)."""

from __future__ import annotations

import unicodedata

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
