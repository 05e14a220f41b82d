"""core/text: untrusted JSON refused before it can recurse, and the escaper's forms."""

from __future__ import annotations

import ast
import json

import pytest

from nvplugin.core import text


@pytest.mark.parametrize(("raw", "depth"), [
    (b"{}", 1), (b'{"a": [1, {"b": "[[[{{"}]}', 3), (b'"\\"[["', 0), (b"[" * 500, 500),
    ('{"é": ["]"]}', 2),
], ids=["flat", "brackets-in-strings", "escaped-quote", "unclosed", "text"])
def test_nesting_depth_skips_strings(raw, depth):
    assert text.nesting_depth(raw) == depth


def test_deep_json_is_refused_before_json_loads_recurses(monkeypatch: pytest.MonkeyPatch):
    def recursing(raw: object) -> object:
        raise AssertionError("json.loads must not see it")

    monkeypatch.setattr(text.json, "loads", recursing)
    with pytest.raises(ValueError, match=r"^nested 100000 levels deep \(at most 64\)$"):
        text.parse_json(b"[" * 100_000 + b"]" * 100_000)


def test_refusing_deep_json_leaves_the_interpreter_able_to_parse_python():
    """Python 3.11's ast module loses count of its recursion depth after a RecursionError in the
    same thread (it then fails with SystemError); parse_json never lets one happen."""
    for _ in range(3):
        with pytest.raises(ValueError):
            text.parse_json("[" * 50_000 + "]" * 50_000)
    tree = ast.parse("def f(x):\n    return [[[[x]]]]\n" * 50)
    assert len(tree.body) == 50


def test_allowed_depth_parses():
    doc = "[" * text.MAX_JSON_DEPTH + "]" * text.MAX_JSON_DEPTH
    assert text.parse_json(doc) == json.loads(doc)
