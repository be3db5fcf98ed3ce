"""Ctrl-C and SIGTERM as a request to stop cleanly: nothing trained is lost.

While a run trains, a first SIGINT or SIGTERM only sets a flag: the trainer finishes the optimizer
step in flight, checkpoints at that step boundary and stops (RunGuards.stop_requested in
harness/train.py), the run is recorded `interrupted` and the command exits 130; `harness run` again
resumes the run from that checkpoint. Anywhere else (data preparation, fine-tuning), and at a second
signal, KeyboardInterrupt is raised at once: the run is still recorded `interrupted`, and the next
attempt resumes from the last checkpoint written and redoes the part that was cut short.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The signals a command received, and whether the trainer should stop at its next step boundary."""

    def __init__(self) -> None:
        self.received: str | None = None  # the first signal's name
        self._deferring = False

    def requested(self) -> bool:
        return self.received is not None

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a first signal only sets the flag, for the trainer to act on at its next step
        boundary; one that came after the last boundary stops the run as the block ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.received is not None:  # training ended before it could act on the signal
            raise KeyboardInterrupt(self.received)

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._deferring and self.received is None:
            self.received = name
            print(f"\n{name}: stopping after this step, with a checkpoint (send it again to stop at once)",
                  file=sys.stderr, flush=True)  # fmt: skip
            return
        self.received = self.received or name
        raise KeyboardInterrupt(name)


@contextmanager
def stop_on_signals(take_ignored: bool = False) -> Iterator[StopSignals]:
    """SIGINT and SIGTERM handled by a StopSignals for the duration of the block. A signal this process
    inherited as ignored (a background job of a non-interactive shell) stays ignored unless
    `take_ignored` (a `--jobs` child, which its parent stops with SIGINT). Off the main thread, where
    handlers cannot be set, signals keep their handling and the flag is never set."""
    stop = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    for number in STOP_SIGNALS:
        if take_ignored or signal.getsignal(number) is not signal.SIG_IGN:
            previous[number] = signal.signal(number, stop.handle)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
