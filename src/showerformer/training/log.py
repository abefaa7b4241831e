"""The run log: ``log.csv`` of the main process, and TensorBoard when it is installed."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from showerformer._atomic import atomic_path
from showerformer.errors import InputError

__all__ = ["LOG_COLUMNS", "RunLog"]

LOG_COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "val_loss",
               "best_val_loss")
"""The first columns of ``log.csv``: training rows leave ``val_loss`` empty, validation rows the
training columns (``epoch`` is 0-based; a validation row's is the epoch just finished).
``val_loss`` is the validation score that picks the best checkpoint (lower is better): the mean
validation loss, or the family's ``validation_metric`` when it has one."""


class RunLog:
    """``log.csv`` (always) and TensorBoard (when importable) of the main process.

    Arguments:
        out_dir: the run folder.
        enabled: write anything at all (the main process only).
        tensorboard: also write TensorBoard scalars when ``torch.utils.tensorboard`` imports.
        say: prints a note (TensorBoard missing).
        extra_columns: metrics of the family's ``training_step`` beyond :data:`LOG_COLUMNS`
            (e.g. a GAN's ``critic_loss``), appended to the header in this order.
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool,
                 say: Callable[[str], None], extra_columns: Sequence[str] = ()) -> None:
        self.columns = tuple(LOG_COLUMNS) + tuple(c for c in extra_columns
                                                  if c not in LOG_COLUMNS)
        self.path = out_dir / "log.csv"
        self.enabled = enabled
        self.rows_written = 0
        self.history: list[dict[str, Any]] = []
        self._tb: Any = None
        self._tb_wanted = tensorboard and enabled
        self._tb_dir = out_dir / "tensorboard"
        self._say = say

    def read(self, keep_rows: int | None) -> list[list[str]]:
        """The first ``keep_rows`` rows of an existing log (those a resumed run keeps: the
        rows written before its checkpoint); nothing for a fresh run.

        Raises:
            InputError: an existing log that cannot be read as CSV text.
        """
        if not (self.enabled and keep_rows and self.path.is_file()):
            return []
        try:
            with open(self.path, newline="") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InputError(f"cannot read the run log ({type(exc).__name__})", path=self.path,
                             expected="the CSV log written by the trainer") from None
        if rows and rows[0] != list(self.columns):
            raise InputError(f"header {','.join(rows[0])[:80]!r}", path=self.path,
                             key="header", expected=",".join(self.columns))
        return rows[1:keep_rows + 1]

    def start(self, rows: list[list[str]]) -> None:
        """Write the log afresh with ``rows`` (from :meth:`read`) under the header."""
        if not self.enabled:
            return
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.columns)
            w.writerows(rows)
        self.rows_written = len(rows)
        if self._tb_wanted:
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(log_dir=str(self._tb_dir))
            except ImportError:
                self._say("TensorBoard is not installed: logging to log.csv only")

    def row(self, values: Mapping[str, Any]) -> None:
        """Append one row (missing columns stay empty)."""
        if not self.enabled:
            return
        self.history.append(dict(values))
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow(["" if values.get(c) is None else values[c]
                                     for c in self.columns])
        self.rows_written += 1
        if self._tb is not None:
            step = int(values["step"])
            for key in self.columns[2:]:
                if key != "best_val_loss" and values.get(key) is not None:
                    tag = ("val/" if key == "val_loss" else "train/") + key
                    self._tb.add_scalar(tag, float(values[key]), step)

    def close(self) -> None:
        """Close TensorBoard's writer (the CSV is closed after every row)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
