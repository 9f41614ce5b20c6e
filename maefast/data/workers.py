"""Worker processes (the PyTorch loader's, the synthetic screen's renderers) that die with the job that started
them, and that also work from a plain script.

The PyTorch loader's workers are forked by multiprocessing's forkserver (a clean process: forking one that
runs DALI threads can deadlock). A job killed with SIGKILL runs no cleanup, and a worker only notices its
parent is gone when it next polls; a forkserver kept alive by an inherited pipe, or a worker stuck in a
read, would stay behind (with parent PID 1) holding its memory. So both ask the kernel to kill them when
their parent ends (Linux's PR_SET_PDEATHSIG): the forkserver when the job ends (it imports
maefast.data._forkserver_guard first), each worker when the forkserver ends.

forkserver and spawn (Python's default start method on some platforms and versions, which the synthetic
screen's renderers use) import the main script in every new process, so a script that starts workers from its
top-level code, outside an `if __name__ == "__main__":` block, would start them again in each of them, and
Python stops it ("DataLoader worker exited unexpectedly"). `worker_processes` sees that case before any process
starts and then does the work in the calling process, with a warning that names the guard.
"""
from __future__ import annotations

import ast
import ctypes
import multiprocessing
import os
import signal
import sys
import warnings
from pathlib import Path

PR_SET_PDEATHSIG = 1
GUARD_MODULE = "maefast.data._forkserver_guard"
LOADER_START_METHOD = "forkserver"


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
    context = multiprocessing.get_context(LOADER_START_METHOD)
    from multiprocessing import forkserver
    preload = list(getattr(forkserver._forkserver, "_preload_modules", ["__main__"]))
    if GUARD_MODULE not in preload:
        context.set_forkserver_preload([*preload, GUARD_MODULE])
    return context


def is_main_guard(test: ast.expr) -> bool:
    """Whether an `if` tests `__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def unguarded_main_script() -> str | None:
    """The path of the main script when the current call comes from its top-level code outside an
    `if __name__ == "__main__":` block; None otherwise (inside the guard, inside a function the guard calls, an
    interactive session, `python -c`, `python -m package`, whose __main__ new processes do not import)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if path is None or (spec is not None and spec.name.endswith("__main__")):  # a package's __main__ is not re-run
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:  # not called from the script's top-level code (e.g. from a thread)
        return None
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    guarded = any(isinstance(node, ast.If) and is_main_guard(node.test) and node.lineno <= line <= node.end_lineno
                  for node in ast.walk(tree))
    return None if guarded else path


def worker_processes(requested: int, what: str, start_method: str | None = None) -> int:
    """`requested` worker processes started with `start_method` (None: multiprocessing's default), or 0 (work in
    this process) when they would re-run an unguarded main script, with a warning that says how to get them. Forked
    processes do not import the main script."""
    method = start_method or multiprocessing.get_start_method()
    if requested <= 0 or method == "fork":
        return requested
    script = unguarded_main_script()
    if script is None:
        return requested
    warnings.warn(f"{what} works in this process instead of {requested} worker process(es): {script} calls it from "
                  f"its top-level code, which every new process would run again; put that code under "
                  f"`if __name__ == \"__main__\":` to use the workers", stacklevel=3)
    return 0
