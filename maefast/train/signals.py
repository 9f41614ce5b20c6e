"""Stopping a training run on request: SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C) both ask the run
to stop at the end of the current step, after writing a checkpoint to resume from; a second SIGINT stops at
once (KeyboardInterrupt, reported as one line by the command)."""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Installed for the training loop (in the main thread: signal handlers live there), restored after it."""

    def __init__(self):
        self.received: str | None = None  # "SIGTERM" or "SIGINT" once one arrived
        self.previous = {}

    def install(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self.handle) for number in STOP_SIGNALS}
        return self

    def restore(self) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def handle(self, number, frame) -> None:
        if number == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # pressed twice: do not wait for the step and the checkpoint
        self.received = self.received or signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.received is not None
