"""Processes that die with the process that started them.

A job killed with SIGKILL runs no cleanup, so the processes it started (loader workers, the forkserver that
forks them, the ranks torchrun starts for a job) would stay behind with parent PID 1, holding memory and
sometimes blocked for ever in a read or a collective with a rank that is gone. Such a process asks the kernel
to kill it when its parent ends (Linux's PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


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
