"""Loader worker processes that die with the job that started them.

The PyTorch loader's workers are forked by multiprocessing's forkserver (a clean process: forking one that
runs DALI threads can deadlock). A job killed with SIGKILL runs no cleanup, and a worker only notices its
parent is gone when it next polls; a forkserver kept alive by an inherited pipe, or a worker stuck in a
read, would stay behind (with parent PID 1) holding its memory. So both ask the kernel to kill them when
their parent ends (Linux's PR_SET_PDEATHSIG): the forkserver when the job ends (it imports
maefast.data._forkserver_guard first), each worker when the forkserver ends.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
GUARD_MODULE = "maefast.data._forkserver_guard"


def die_with_parent() -> None:
    """Asks the kernel to SIGKILL this process when its parent ends (Linux; elsewhere nothing happens), and
    ends it at once when the parent has already gone (it was re-parented to init)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() == 1:  # the parent ended before the request: nobody would kill this process later
        os._exit(1)


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
