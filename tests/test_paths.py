"""Output paths checked before any work: kind, writability, room on the disk, full-disk errors."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from showerformer._paths import (
    check_output_dir,
    check_output_file,
    disk_full_error,
    free_bytes,
    human_bytes,
    is_disk_full,
)
from showerformer.errors import OutputError


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder in which no file can be created (for root too: a pseudo file system)."""
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    if os.geteuid() == 0:
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc to stand for an unwritable folder as root")
        yield Path("/proc")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1234) == "1.2 kB"
    assert human_bytes(9.0e6) == "9.0 MB"
    assert human_bytes(31.6e15) == "31.6 PB"
    assert human_bytes(5e18) == "5000.0 PB"


def test_free_bytes_of_a_path_not_yet_created(tmp_path):
    assert free_bytes(tmp_path / "a" / "b" / "c.h5") == free_bytes(tmp_path) > 0


def test_check_output_file_accepts_new_and_existing_files(tmp_path):
    new = tmp_path / "sub" / "dir" / "out.h5"
    assert check_output_file(new) == new
    assert not (tmp_path / "sub").exists()  # checking creates nothing
    old = tmp_path / "old.h5"
    old.write_bytes(b"x")
    assert check_output_file(str(old), estimated_bytes=10) == old
    assert not list(tmp_path.glob(".showerformer-probe-*"))


def test_check_output_file_refuses_a_directory(tmp_path):
    with pytest.raises(OutputError, match=r"--out .*: is a directory \(expected a file path"):
        check_output_file(tmp_path)


def test_check_output_file_refuses_a_device():
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    with pytest.raises(OutputError, match="not a regular file"):
        check_output_file("/dev/null", option="TARGET")


def test_check_output_file_refuses_a_path_below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"f is a file, so the folder .* cannot be created"):
        check_output_file(tmp_path / "f" / "g" / "out.h5")


def test_check_output_file_refuses_an_unwritable_folder(read_only_dir):
    with pytest.raises(OutputError, match=f"cannot create files in {read_only_dir}"):
        check_output_file(read_only_dir / "out.h5", option="-o")


def test_check_output_file_space(tmp_path):
    free = free_bytes(tmp_path)
    assert check_output_file(tmp_path / "a.h5", estimated_bytes=free / 10) == tmp_path / "a.h5"
    check_output_file(tmp_path / "a.h5", estimated_bytes=None)
    check_output_file(tmp_path / "a.h5", estimated_bytes=0)
    with pytest.raises(OutputError) as exc:
        check_output_file(tmp_path / "a.h5", estimated_bytes=2 * free + 1e12,
                          space_option="--skip-space-check", content="3 showers of 1 PB")
    msg = str(exc.value)
    assert "needs about" in msg and "(3 showers of 1 PB)" in msg
    assert "but the disk has" in msg and " free " in msg
    assert "--skip-space-check" in msg and "\n" not in msg
    with pytest.raises(OutputError, match="needs about") as exc:
        check_output_file(tmp_path / "a.h5", estimated_bytes=2 * free + 1e12)
    assert "write anyway" not in str(exc.value)


def test_check_output_dir(tmp_path, read_only_dir):
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert check_output_dir(tmp_path) == tmp_path
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(OutputError, match="cannot be created"):
        check_output_dir(tmp_path / "f" / "run")
    with pytest.raises(OutputError, match="cannot create files"):
        check_output_dir(read_only_dir / "run")
    with pytest.raises(OutputError, match="needs about"):
        check_output_dir(tmp_path / "run", estimated_bytes=2 * free_bytes(tmp_path) + 1e12)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_error(tmp_path, code):
    exc = OSError(code, os.strerror(code), str(tmp_path / ".x.tmp"))
    assert is_disk_full(exc)
    err = disk_full_error(exc, tmp_path / "x.h5")
    assert isinstance(err, OutputError) and isinstance(err, OSError)
    assert err.errno == code  # still recognisable as a full disk
    msg = str(err)
    assert msg.startswith(f"--out {tmp_path / 'x.h5'}: the disk became full while writing")
    assert "unchanged" in msg and "\n" not in msg
    assert str(disk_full_error(exc, "y.h5", option="")).startswith("y.h5: ")


def test_disk_full_error_as_hdf5_reports_it():
    # h5py raises OSError(errno, text) with the C library's message inside the text
    exc = OSError("Can't synchronously write data (file write failed: errno = 28, error "
                  "message = 'No space left on device')")
    assert disk_full_error(exc, "out.h5") is not None


def test_disk_full_error_ignores_other_errors():
    assert disk_full_error(PermissionError(errno.EACCES, "Permission denied"), "x") is None
    assert disk_full_error(OutputError("is a directory", path="x"), "x") is None
    assert not is_disk_full(ValueError("No space left on device"))
