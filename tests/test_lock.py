"""One writer per output directory: a second job is refused naming the holder; a killed holder's lock is gone."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maefast.errors import UserInputError
from maefast.io import current_umask
from maefast.lock import LOCK_FILE, OutputLock, holder_record

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


def test_a_refused_job_waits_for_the_record_of_a_holder_that_has_locked_but_not_written_it(tmp_path, monkeypatch):
    """A holder truncates the lock file, then writes its record; a job refused in between read an empty file and
    named "the holder of <path>" (test_two_train_runs_started_at_once_into_one_directory failed so, now and then).
    Here the holder locks, waits until the refused job has read the empty file, then writes."""
    out = tmp_path / "out"
    out.mkdir()
    holder = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # its own open file: its flock excludes ours
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    reads, read_holder = [], OutputLock.read_holder

    def read_then_the_holder_writes(lock):
        reads.append(read_holder(lock))
        if len(reads) == 1:
            os.pwrite(holder, holder_record("late holder"), 0)
        return reads[-1]
    monkeypatch.setattr(OutputLock, "read_holder", read_then_the_holder_writes)
    try:
        with pytest.raises(UserInputError, match=rf"in use by another maefast job \(late holder, pid {os.getpid()} "):
            OutputLock(out, "second")
        assert reads[0] is None and reads[-1]["job"] == "late holder"
        # a record that never comes (the holder is not maefast): after the wait, the refusal names the file
        os.ftruncate(holder, 0)
        monkeypatch.setattr("maefast.lock.HOLDER_WAIT_S", 0.1)
        monkeypatch.setattr(OutputLock, "read_holder", read_holder)
        with pytest.raises(UserInputError, match=rf"in use by another maefast job \(the holder of .*{LOCK_FILE}\)"):
            OutputLock(out, "third")
    finally:
        os.close(holder)


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


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory"])
def test_the_lock_file_is_never_a_link_or_anything_but_a_file(tmp_path, planted):
    """A symbolic link planted at <out>/.maefast.lock had its target truncated to 0 bytes."""
    out, target = tmp_path / "out", tmp_path / "precious.txt"
    out.mkdir()
    target.write_text("keep me")
    lock = out / LOCK_FILE
    if planted == "symlink":
        lock.symlink_to(target)
    elif planted == "fifo":
        os.mkfifo(lock)
    else:
        lock.mkdir()
    with pytest.raises(UserInputError, match=rf"{LOCK_FILE} is not a regular file"):
        OutputLock(out, "maefast embed")
    assert target.read_text() == "keep me"
    (lock.unlink if planted != "directory" else lock.rmdir)()
    OutputLock(out, "maefast embed").release()
    assert oct(lock.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())


def test_with_a_symlinked_lock_a_command_is_one_line(screen, tmp_path, capsys):
    from maefast.cli import main
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    assert main(train_command(tmp_path / "run", screen)[3:]) == 2
    assert not (tmp_path / "elsewhere").exists()
    assert capsys.readouterr().err.count("\n") == 1
