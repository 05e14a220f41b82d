"""tabwriter.align reproduces Go's text/tabwriter column blocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nvplugin.api.tabwriter import align

CASES = [
    ("no-tabs", "a\nbb\n", "a\nbb\n"),
    ("one-block", "a:\tx\nlonger:\ty\n", "a:     x\nlonger:y\n"),
    # A line without the column (header) ends the block: widths do not leak across it.
    ("header-breaks-block", "a:\t1\nHEAD\nlonger:\t2\n", "a:1\nHEAD\nlonger:2\n"),
    # The last cell of a line never counts towards alignment.
    ("last-cell-ignored", "x\tshort\nyy\tvery long last cell\n",
     "x short\nyyvery long last cell\n"),
    # Nested columns: column 1 blocks live inside a column 0 block.
    ("nested", "a\tb\tc\naa\tbbb\tc\nzzz\tq\n", "a  b  c\naa bbbc\nzzzq\n"),
    # Column 1 block ends at a line with only one tab, though column 0 continues.
    ("nested-ends", "a\tbbbb\tc\na\tb\na\tb\tc\n", "abbbbc\nab\nabc\n"),
    ("unterminated-last-line", "a\tb\nccc\td", "a  b\ncccd"),
    ("empty-cells", "\tx\n\t\ty\n", "x\ny\n"),
    ("runes-not-bytes", "°C:\t1\nabcd:\t2\n", "°C:  1\nabcd:2\n"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_align(text: str, expected: str) -> None:
    assert align(text) == expected


def test_padding_and_minwidth() -> None:
    assert align("a\tb\nccc\td\n", padding=1) == "a   b\nccc d\n"
    assert align("a\tb\n", minwidth=5) == "a    b\n"


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="negative"):
        align("", padding=-1)
    with pytest.raises(ValueError, match="negative"):
        align("", minwidth=-1)


cell = st.text(alphabet=st.characters(blacklist_characters="\t\n"), max_size=8)
line = st.lists(cell, min_size=1, max_size=4)


def oracle(lines: list[list[str]]) -> list[str]:
    """Column k of line i is as wide as the widest cell k in the maximal run of lines around i
    that all have a tab-terminated cell k (a different formulation from align's recursion)."""
    def has(j: int, k: int) -> bool:
        return 0 <= j < len(lines) and k < len(lines[j]) - 1

    out = []
    for i, cells in enumerate(lines):
        parts = []
        for k, text in enumerate(cells[:-1]):
            lo, hi = i, i
            while has(lo - 1, k):
                lo -= 1
            while has(hi + 1, k):
                hi += 1
            parts.append(text.ljust(max(len(lines[j][k]) for j in range(lo, hi + 1))))
        out.append("".join(parts) + cells[-1])
    return out


@given(st.lists(line, min_size=1, max_size=12))
def test_matches_column_block_oracle(lines: list[list[str]]) -> None:
    text = "\n".join("\t".join(cells) for cells in lines) + "\n"
    assert align(text).split("\n") == [*oracle(lines), ""]
