"""Readers and writers of the community shower formats, and format detection."""

from showerformer.io.calochallenge import (
    CaloChallengeWriter,
    iter_calochallenge,
    read_calochallenge,
    write_calochallenge,
)
from showerformer.io.detect import FORMATS, detect_format, read_showers, summarize, write_showers
from showerformer.io.edm4hep import edm4hep_collections, read_edm4hep
from showerformer.io.par04 import Par04Writer, iter_par04, read_par04, write_par04
from showerformer.io.pointcloud import iter_pointcloud, read_pointcloud, write_pointcloud
from showerformer.io.sparse import (
    SparseVoxelFile,
    SparseVoxelWriter,
    iter_sparse,
    read_sparse,
    write_sparse,
)

__all__ = [
    "FORMATS",
    "CaloChallengeWriter",
    "Par04Writer",
    "SparseVoxelFile",
    "SparseVoxelWriter",
    "detect_format",
    "edm4hep_collections",
    "iter_calochallenge",
    "iter_par04",
    "iter_pointcloud",
    "iter_sparse",
    "read_calochallenge",
    "read_edm4hep",
    "read_par04",
    "read_pointcloud",
    "read_showers",
    "read_sparse",
    "summarize",
    "write_calochallenge",
    "write_par04",
    "write_pointcloud",
    "write_showers",
    "write_sparse",
]
