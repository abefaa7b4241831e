"""Result tables of the commands: rich tables on a terminal, Markdown in logs and summary files."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ResultTable", "show_table", "write_summary"]


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass
class ResultTable:
    """A titled table of strings that prints the same numbers on a terminal and in a log.

    Arguments:
        title: one line above the table.
        columns: column headers.
        rows: the rows, one string per column.
        left: columns aligned left (the others are aligned right).
        notes: lines printed under the table (and kept in the Markdown).
        dim_rows: indices of rows shown dimmed on a terminal (references, not results).
    """

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    left: frozenset[str] = frozenset()
    notes: list[str] = field(default_factory=list)
    dim_rows: set[int] = field(default_factory=set)

    def add_row(self, *cells: Any, dim: bool = False) -> None:
        """Append one row (missing cells become empty)."""
        if len(cells) > len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        if dim:
            self.dim_rows.add(len(self.rows))
        self.rows.append([_cell(c) for c in cells] + [""] * (len(self.columns) - len(cells)))

    def to_markdown(self) -> str:
        """The table as GitHub Markdown: a bold title line, a pipe table, the notes."""

        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        widths = [max([len(esc(c))] + [len(esc(r[i])) for r in self.rows] + [3])
                  for i, c in enumerate(self.columns)]

        def line(cells: Iterable[str]) -> str:
            out = []
            for i, (text, w) in enumerate(zip(cells, widths, strict=True)):
                text = esc(text)
                out.append(text.ljust(w) if self.columns[i] in self.left else text.rjust(w))
            return "| " + " | ".join(out) + " |"

        rule = "|" + "|".join(
            ("-" * (w + 1) + "-" if self.columns[i] in self.left else "-" * (w + 1) + ":")
            for i, w in enumerate(widths)) + "|"
        parts = [f"**{esc(self.title)}**", "", line(self.columns), rule,
                 *(line(r) for r in self.rows)]
        if self.notes:
            parts += ["", *self.notes]
        return "\n".join(parts)

    def to_rich(self) -> Any:
        """The table as a :class:`rich.table.Table` (cells fold, never cut)."""
        from rich.table import Table

        table = Table(title=self.title, title_justify="left")
        for c in self.columns:
            table.add_column(c, justify="left" if c in self.left else "right",
                             overflow="fold", style="bold" if c == self.columns[0] else None)
        for i, r in enumerate(self.rows):
            table.add_row(*r, style="dim" if i in self.dim_rows else None)
        return table


def show_table(table: ResultTable, console: Any = None) -> None:
    """Print ``table``: a rich table on a terminal; Markdown (full width, nothing cut) when the
    output is a file or a pipe, so that logs keep every digit."""
    from rich.console import Console

    console = console or Console()
    if console.is_terminal:
        console.print(table.to_rich())
        for note in table.notes:
            console.print(note, highlight=False, markup=False)
    else:
        console.print(table.to_markdown() + "\n", soft_wrap=True, highlight=False, markup=False)


def write_summary(path: str | os.PathLike[str], title: str,
                  sections: Sequence[tuple[str, Sequence[ResultTable | str]]]) -> Path:
    """Write a Markdown summary (atomically): a title, then per section a heading and its
    tables and text lines.

    Arguments:
        path: the ``.md`` file.
        title: the document title.
        sections: ``(heading, [ResultTable or text, ...])`` in order.

    Returns:
        The path written.
    """
    from showerformer._atomic import atomic_path

    parts = [f"# {title}", ""]
    for heading, items in sections:
        parts += [f"## {heading}", ""]
        for item in items:
            parts += [item.to_markdown() if isinstance(item, ResultTable) else item, ""]
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return p
