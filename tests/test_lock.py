"""One writer per output directory: a second job is refused naming the holder; a killed holder's lock is gone."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maefast.errors import UserInputError
from maefast.lock import LOCK_FILE, OutputLock

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from maefast.lock import OutputLock; lock = OutputLock(sys.argv[1], 'test holder'); " \
       "print('locked', flush=True); time.sleep(600)"


def hold_lock(directory) -> subprocess.Popen:
    """Another process holding the lock on `directory` (until it is killed)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_writer_is_refused_naming_the_holder_until_it_ends(tmp_path):
    holder = hold_lock(tmp_path / "out")
    try:
        with pytest.raises(UserInputError, match=rf"out is in use by another maefast job \(test holder, pid "
                                                 rf"{holder.pid} on .*started .*\); wait for it to end"):
            OutputLock(tmp_path / "out", "second")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the killed holder's file is still there, naming it, but the kernel dropped its lock
    assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == holder.pid
    lock = OutputLock(tmp_path / "out", "after the kill")
    assert json.loads((tmp_path / "out" / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    OutputLock(tmp_path / "out", "after the release").release()


def test_an_existing_file_is_not_an_output_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserInputError, match=r"--out .*file is an existing file; maefast train writes a directory"):
        OutputLock(tmp_path / "file", "maefast train")


def train_command(out, screen, *extra):
    return [sys.executable, "-m", "maefast.cli", "train", "--recipe", "debug", "--out", str(out), "--no-progress",
            "--data", str(screen), "--max-steps", "10000", "--set", "run.checkpoint_every=5000",
            "--set", "run.log_every=1", "--set", "data.batch_size=4", "--set", "model.overrides.decoder_depth=1",
            *extra]


def test_two_train_runs_started_at_once_into_one_directory(screen, tmp_path):
    """Both used to run and interleave metrics.csv; now one trains and the other is refused."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(train_command(tmp_path / "run", screen), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    deadline = time.time() + 120
    while all(run.poll() is None for run in runs) and time.time() < deadline:
        time.sleep(0.1)
    refused = next(run for run in runs if run.poll() is not None)
    winner = next(run for run in runs if run is not refused)
    out, err = refused.communicate()
    assert refused.returncode == 2, out + err
    assert err.strip().count("\n") == 0 and f"is in use by another maefast job (maefast train, pid {winner.pid}" in err
    while not (tmp_path / "run" / "metrics.csv").exists() and winner.poll() is None:
        time.sleep(0.1)
    winner.send_signal(signal.SIGTERM)
    out, err = winner.communicate(timeout=300)
    assert winner.returncode == 143, out + err  # preempted after its checkpoint
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in lines[1:]]
    assert lines[0].startswith("step,") and steps == list(range(1, len(steps) + 1))


def test_under_torchrun_a_refused_lock_stops_every_rank(screen, tmp_path):
    """Only rank 0 takes the lock; when it is refused, the other rank stops too instead of waiting forever."""
    from tests.train.test_distributed import free_port
    holder = hold_lock(tmp_path / "run")
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
                   "127.0.0.1", "--master-port", str(free_port()), "-m", "maefast.cli",
                   *train_command(tmp_path / "run", screen)[3:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode != 0
    assert "is in use by another maefast job (test holder" in result.stderr
    assert "rank 1: stopping because rank 0 stopped" in result.stderr
