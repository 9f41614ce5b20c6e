"""Progress of a long step, as a person reading a terminal or a log file wants it.

On a terminal (and when asked for: `bar=True`) a tqdm bar; everywhere else (a log file, a scheduler's output,
`--no-progress`) plain lines, no carriage returns: the first update, then at most one line every
`interval` seconds, and the last. A line reads

    train: 120/300 steps (40%), loss 0.8123, crops/s 95.1; 0:00:52 elapsed, about 0:01:18 left
"""
from __future__ import annotations

import datetime
import sys
import time

LINE_INTERVAL = 10.0  # seconds between two plain progress lines


def duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
    """`update(n, **values)` after each piece of work, `close()` at the end (also as a context manager).

    total: the work to do (None: unknown); initial: what was done before (a resumed job); values: named numbers
    shown with the count (a float with 4 significant digits); silent: show nothing (the other ranks of a
    distributed job)."""

    def __init__(self, desc: str, total: int | None, unit: str, initial: int = 0, bar: bool = True,
                 interval: float = LINE_INTERVAL, stream=None, silent: bool = False):
        self.desc, self.total, self.unit, self.done = desc, total, unit, initial
        self.stream = stream or sys.stdout
        self.interval, self.values = interval, {}
        self.start = time.perf_counter()
        self.first_done, self.shown_done, self.last_line = initial, initial, None
        self.bar, self.silent = None, silent
        if bar and not silent and getattr(sys.stderr, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **values) -> None:
        self.done += n
        self.values.update(values)
        if self.bar is not None:
            self.bar.update(n)
            if values:
                self.bar.set_postfix({key: shown(value) for key, value in self.values.items()})
            return
        if self.silent:
            return
        now = time.perf_counter()
        finished = self.total is not None and self.done >= self.total
        if self.last_line is None or finished or now - self.last_line >= self.interval:
            self.write_line(now)

    def write_line(self, now: float) -> None:
        self.last_line, self.shown_done = now, self.done
        count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        if self.total:
            count += f" ({self.done / self.total:.0%})"
        values = "".join(f", {key.replace('_', '/')} {shown(value)}" for key, value in self.values.items())
        elapsed = now - self.start
        timing = f"; {duration(elapsed)} elapsed"
        rate = (self.done - self.first_done) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0 and self.done < self.total:
            timing += f", about {duration((self.total - self.done) / rate)} left"
        print(f"{self.desc}: {count}{values}{timing}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.done != self.shown_done and not self.silent:  # the last state, unless its line was printed
            self.write_line(time.perf_counter())


def shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
