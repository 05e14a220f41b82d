"""Elastic tabstops exactly as Go's `text/tabwriter` laid out nvidia-docker 1.0's text pages.

1.0 wrote its templates through `tabwriter.Writer.Init(w, 0, 4, 0, ' ', 0)`: minwidth 0,
tabwidth 4, padding 0, space padding, no flags. The rules that produce its output:

* A line is split into cells at tabs. Every cell but the last is *tab-terminated* and belongs
  to a column; the last cell is the text before the newline and never takes part in alignment.
* A column block is a run of consecutive lines that all have a tab-terminated cell in that
  column. A line without that cell (a header such as `  PCI`, a blank line) ends the block.
* The width of a column in a block is the widest cell text (counted in characters, as Go counts
  runes) plus padding, at least minwidth; every cell of the column in that block is padded to it.
* Blocks nest: column k+1 blocks are found only inside a column k block, so widths of deeper
  columns never leak across a line that ends an outer block.

This is why `Cores:        N/A` in 1.0's second sample is wider than the first: its block runs on
into `P2P Available:  None`. Only `\\t` and `\\n` are structural here; 1.0's templates used no
`\\v`, `\\f` or escape bytes, and callers escape control characters in values (core/text.py).

Pure: text in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence

Cells = list[str]


def align(text: str, *, minwidth: int = 0, padding: int = 0) -> str:
    """Align `text` as a flushed Go `tabwriter.Writer` padding with spaces, with these settings
    and no flags, would. (Go's tab padding and its `tabwidth` are never used: 1.0 padded with
    spaces, where `tabwidth` has no effect.)
    """
    if minwidth < 0 or padding < 0:
        raise ValueError("minwidth and padding must not be negative")
    lines = [line.split("\t") for line in text.split("\n")]
    writer = _Layout(lines, minwidth, padding)
    writer.format([], 0, len(lines))
    # The text after the last newline is an unterminated line: written without a newline.
    return "\n".join(writer.out)


class _Layout:
    __slots__ = ("lines", "minwidth", "out", "padding")

    def __init__(self, lines: list[Cells], minwidth: int, padding: int) -> None:
        self.lines = lines
        self.minwidth = minwidth
        self.padding = padding
        self.out: list[str] = []

    def format(self, widths: list[int], line0: int, line1: int) -> None:
        """Lay out lines[line0:line1] given the widths of the columns left of `len(widths)`."""
        column = len(widths)
        this = line0
        while this < line1:
            if column >= len(self.lines[this]) - 1:
                this += 1
                continue
            # A block of this column starts here: lines before it only have columns to the left.
            self.write(widths, line0, this)
            line0 = this
            width = self.minwidth
            while this < line1 and column < len(self.lines[this]) - 1:
                width = max(width, len(self.lines[this][column]) + self.padding)
                this += 1
            self.format([*widths, width], line0, this)
            line0 = this
        self.write(widths, line0, line1)

    def write(self, widths: Sequence[int], line0: int, line1: int) -> None:
        for cells in self.lines[line0:line1]:
            parts: list[str] = []
            for j, cell in enumerate(cells):
                parts.append(cell)
                if j < len(widths):
                    parts.append(" " * (widths[j] - len(cell)))
            self.out.append("".join(parts))
