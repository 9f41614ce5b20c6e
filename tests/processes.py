"""Child processes of the tests that leave nothing behind, however the test ends.

A test's command (torchrun, a CLI run) starts in a session of its own; when the test is done with it (it
ended, an assertion failed, a timeout passed) every process it started is killed: its whole process group,
and every descendant found under it first (torchrun starts each rank in a session of its own, which a signal
to the group would miss). A rank or loader worker blocked in a collective with a dead peer would otherwise
stay behind with parent PID 1.
"""
from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path


def children(pid: int) -> list[int]:
    """The processes `pid` started (of any of its threads), read from /proc."""
    found = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: its children, their children, ..."""
    found = children(pid)
    for child in list(found):
        found += descendants(child)
    return found


def kill_all(process: subprocess.Popen) -> None:
    """SIGKILL to `process`, everything below it and its process group; then reaps it."""
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def started(command: list[str], **options):
    """subprocess.Popen(command, **options) in a session of its own, killed with all it started on exit."""
    process = subprocess.Popen(command, start_new_session=True, **options)
    try:
        yield process
    finally:
        kill_all(process)


def run(command: list[str], timeout: float, **options) -> subprocess.CompletedProcess:
    """subprocess.run(command, capture_output=True, text=True) whose processes are all killed at the timeout
    (subprocess.TimeoutExpired) or on any other way out."""
    with started(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options) as process:
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
