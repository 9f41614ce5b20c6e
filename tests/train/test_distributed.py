"""Two CPU processes (torchrun, gloo): gradients are synchronized and no image is seen twice in an epoch (whose
last, partial step is dropped)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from maefast.data import open_dataset

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks(screen, tmp_path, parallel):
    report = tmp_path / "report"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), str(ROOT / "tests" / "train" / "distributed_worker.py"),
               str(screen), str(tmp_path / "run"), str(report), parallel]
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads(Path(f"{report}.{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    # each image at most once per epoch over both ranks
    first, second = set(ranks[0]["images"]), set(ranks[1]["images"])
    assert not first & second
    # every full step's images: training drops the last, partial step of an epoch (3 images on each of 2 ranks)
    every = set(open_dataset(screen).ids)
    assert first | second <= every and len(first | second) == len(every) // 6 * 6
    # different data per rank (different losses), yet identical gradients and, after training, weights
    assert ranks[0]["loss"] != ranks[1]["loss"]
    sums = ranks[0]["grad_and_param_sums"]
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "step-00000003" / "model.safetensors").exists()
