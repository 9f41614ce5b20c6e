"""Loader worker processes that die with the job that started them.

The PyTorch loader's workers are forked by multiprocessing's forkserver (a clean process: forking one that
runs DALI threads can deadlock). A job killed with SIGKILL runs no cleanup, and a worker only notices its
parent is gone when it next polls; a forkserver kept alive by an inherited pipe, or a worker stuck in a
read, would stay behind (with parent PID 1) holding its memory. So both ask the kernel to kill them when
their parent ends (Linux's PR_SET_PDEATHSIG): the forkserver when the job ends (it imports
maefast.data._forkserver_guard first), each worker when the forkserver ends.
"""
from __future__ import annotations

import multiprocessing
import os
import signal

from maefast.processes import die_with_parent

GUARD_MODULE = "maefast.data._forkserver_guard"


class WorkerSetup:
    """A loader worker's worker_init_fn: the job's environment as it was when the loader was made, then
    worker_dies_with_parent. The forkserver the workers are forked from may have started earlier, with the
    environment of that moment, and what the workers read can depend on it (object storage's endpoint and
    credentials, maefast's cache settings)."""

    def __init__(self):
        self.environment = dict(os.environ)

    def __call__(self, worker_id: int) -> None:
        os.environ.clear()
        os.environ.update(self.environment)
        worker_dies_with_parent(worker_id)


def worker_dies_with_parent(worker_id: int) -> None:
    """The DataLoader's worker_init_fn. Ctrl-C reaches the whole process group; the job handles it (a
    training run checkpoints first), so a worker ignores it rather than die under the job's feet."""
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()


def start_guarded_workers():
    """The multiprocessing context for loader workers: forkserver, whose server process imports the guard
    (before it starts; a forkserver started earlier by other code keeps its own preload list)."""
    context = multiprocessing.get_context("forkserver")
    from multiprocessing import forkserver
    preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    if GUARD_MODULE not in preload:
        context.set_forkserver_preload([*preload, GUARD_MODULE])
    return context
