"""Tables of plain strings for the commands that read local files (``audit``, ``certs``).

A rich table in a terminal, aligned plain text otherwise (pipes, ``NO_COLOR``),
as ``jobkit list`` does (`jobkit.cli.render.wants_table` decides).  Cells
are shown with their control characters escaped: an audit log holds what
clients sent, and a client's command must never drive the reader's terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import click

from jobkit.cli.render import wants_table

__all__ = ["Column", "echo_table", "plain_text_table", "printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` on one safe line: control characters as ``\\n``, ``\\x1b``, ``\\u2028``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@dataclass(frozen=True)
class Column:
    """A column of `echo_table`.

    Attributes:
        header: Its heading.
        right: Right-aligned (numbers).
        wide: Takes the width left over, folding long cells (in a terminal).
    """

    header: str
    right: bool = False
    wide: bool = False


def plain_text_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """The rows as aligned plain text under a header line; cells are never cut."""
    table = [[c.header for c in columns], *([printable(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = []
    for row in table:
        cells = [cell.rjust(width) if column.right else cell.ljust(width)
                 for cell, width, column in zip(row, widths, columns)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def echo_table(columns: Sequence[Column], rows: Sequence[Sequence[str]],
               styles: Sequence[str | None] | None = None) -> None:
    """Print the rows: a rich table (``styles``: one rich style per row) in a terminal."""
    if not wants_table():
        click.echo(plain_text_table(columns, rows), nl=False)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column.header, justify="right" if column.right else "left",
                         no_wrap=not column.wide, overflow="fold" if column.wide else "ellipsis",
                         ratio=1 if column.wide else None)
    for index, row in enumerate(rows):
        style = styles[index] if styles else None
        # Text, not markup: a logged command may well contain "[red]".
        table.add_row(*(Text(printable(cell), style=style or "") for cell in row))
    Console().print(table)
