"""Distributed data parallel on CPU: two gloo processes reproduce the single-process run."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from training_helpers import SmoothMLP, run_smooth

from showerformer.training.checkpoint import load_weights, read_checkpoint_info

HELPERS = Path(__file__).with_name("training_helpers.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_run_matches_single_process(tmp_path) -> None:
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(HELPERS), "ddp", str(tmp_path / "ddp")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)

    n_threads = torch.get_num_threads()
    try:
        run_smooth(tmp_path / "single")
    finally:
        torch.set_num_threads(n_threads)

    ddp, single = _rows(tmp_path / "ddp" / "log.csv"), _rows(tmp_path / "single" / "log.csv")
    assert len(ddp) == len(single) == 18  # 16 steps + 2 validations
    for a, b in zip(ddp, single, strict=True):
        assert (a["step"], a["epoch"]) == (b["step"], b["epoch"])
        for key in ("loss", "grad_norm", "val_loss"):
            if b[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), (a, key)
        assert a["lr"] == b["lr"]
    # only rank 0 wrote: one run folder, one log; the final weights agree
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoints", "log.csv", "train_config.json"]
    info_ddp = read_checkpoint_info(tmp_path / "ddp")
    assert info_ddp["state"]["world_size"] == 2 and len(info_ddp["rng"]) == 2
    a, b = SmoothMLP(), SmoothMLP()
    load_weights(a, Path(info_ddp["path"]) / "model.safetensors")
    load_weights(b, tmp_path / "single" / "checkpoints" / "step-0000016" / "model.safetensors")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
