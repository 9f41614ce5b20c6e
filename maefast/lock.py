"""One writer per output directory: a job holds an exclusive lock on its --out, and a second job started on
the same directory is refused, naming the holder.

The lock is fcntl.flock on <dir>/.maefast.lock. The kernel drops it when the holding process ends, however
it ends (SIGKILL included), so a lock left by a killed job never blocks: the file may remain, but only a
living holder keeps it locked. The file's content (pid, host, start time, command) only names the holder
in the refusal message; the holder writes it just after locking, so a job refused in that instant reads the
file again until it is there (up to HOLDER_WAIT_S). The file is opened without following a symbolic link (one planted at
<dir>/.maefast.lock would otherwise have its target truncated) and must be a regular file.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from maefast.errors import UserInputError

LOCK_FILE = ".maefast.lock"
# a holder truncates the file, then writes its record: a job refused in between reads it again for this long
HOLDER_WAIT_S = 1.0


class OutputLock:
    """Held from construction until release() (or the end of the process)."""

    def __init__(self, directory, job: str):
        self.descriptor = None
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise UserInputError(f"--out {directory} is an existing file; {job} writes a directory there")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                 0o666)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link, a FIFO, a directory
                raise UserInputError(f"{self.path} is not a regular file (a symbolic link, FIFO or directory "
                                     f"there?); remove it, maefast keeps its lock in a plain file") from None
            raise
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise UserInputError(f"{self.path} is not a regular file; remove it, maefast keeps its lock in a "
                                 f"plain file")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserInputError(f"--out {directory} is in use by another maefast job ({self.holder()}); wait for "
                                 f"it to end or choose another --out") from None
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, holder_record(job), 0)
        except OSError:
            os.close(descriptor)
            raise
        self.descriptor = descriptor

    def holder(self) -> str:
        """Who holds the lock, from its record; read again for up to HOLDER_WAIT_S while the record is not
        there yet (the holder has locked but not written it), then the file's name if it never is."""
        deadline = time.monotonic() + HOLDER_WAIT_S
        while (info := self.read_holder()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if info is None:  # released meanwhile, or not maefast's
            return f"the holder of {self.path}"
        return f"{info['job']}, pid {info['pid']} on {info['host']}, started {info['started']}"

    def read_holder(self) -> dict | None:
        """The holder's record, or None while it is empty or incomplete (or not maefast's)."""
        try:
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(descriptor, "rb") as handle:
                info = json.loads(handle.read(1 << 16))
            return info if isinstance(info, dict) and {"job", "pid", "host", "started"} <= info.keys() else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.descriptor is not None:
            os.ftruncate(self.descriptor, 0)
            os.close(self.descriptor)  # closing drops the flock
            self.descriptor = None

    def __del__(self):
        self.release()


def holder_record(job: str) -> bytes:
    """What a holder writes into the lock file: it names the holder in a refusal."""
    return json.dumps({"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": sys.argv}).encode()
