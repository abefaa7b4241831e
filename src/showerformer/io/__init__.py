"""Readers and writers of the community shower formats, and format detection."""

from showerformer.io.calochallenge import (
    CaloChallengeWriter,
    iter_calochallenge,
    read_calochallenge,
    write_calochallenge,
)
from showerformer.io.detect import FORMATS, detect_format, read_showers, summarize, write_showers
from showerformer.io.par04 import Par04Writer, iter_par04, read_par04, write_par04

__all__ = [
    "FORMATS",
    "CaloChallengeWriter",
    "Par04Writer",
    "detect_format",
    "iter_calochallenge",
    "iter_par04",
    "read_calochallenge",
    "read_par04",
    "read_showers",
    "summarize",
    "write_calochallenge",
    "write_par04",
    "write_showers",
]
