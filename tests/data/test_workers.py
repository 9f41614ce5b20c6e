"""The PyTorch loader's worker processes die with the job: after kill -9 of a job, a forkserver and a ~600 MB
worker used to stay alive with parent PID 1 (five pairs accumulated)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import json, sys, time
from multiprocessing import forkserver
from maefast.data import make_loader, open_dataset
loader = make_loader(open_dataset(sys.argv[1]), batch_size=4, crop_size=32, backend="torch", num_workers=2)
next(iter(loader))
workers = [worker.pid for worker in loader.backend.loader._iterator._workers]
print(json.dumps({"workers": workers, "forkserver": forkserver._forkserver._forkserver_pid}), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_workers_and_forkserver_die_with_a_killed_job(rxrx8):
    job = subprocess.Popen([sys.executable, "-c", HOLD, str(rxrx8)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        started = json.loads(job.stdout.readline())
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    processes = [*started["workers"], started["forkserver"]]
    assert len(started["workers"]) == 2 and all(pid > 0 for pid in processes)
    deadline = time.time() + 30
    while any(alive(pid) for pid in processes) and time.time() < deadline:
        time.sleep(0.1)
    left = [pid for pid in processes if alive(pid)]
    for pid in left:  # do not leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still alive after the job was killed: {left} of {started}"
