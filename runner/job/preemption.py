"""SIGTERM/SIGINT become a stop request that the run honours at its next safe point.

Pods give a few seconds between SIGTERM and SIGKILL (RunPod spot 5 s, `docker stop` 10 s,
Kubernetes 30 s): the handler only records the request; the training loop, the evaluation
loop and data preparation poll it, and the run then commits a checkpoint within
`checkpoint.grace_seconds` of the signal. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import os
import signal
import time

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again" -- running the same command resumes the run
EXIT_INTERRUPTED_TWICE = 130


class Stopped(Exception):
    """A stop request met outside the training loop (a baseline's fit, the bundle): the run ends preempted."""


class StopRequest:
    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic() of the first signal
        self.signal: int | None = None

    def __enter__(self) -> StopRequest:
        """Installs the handlers; leaving restores the previous ones (tests and notebooks keep theirs)."""
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        if self.at is not None and signum == signal.SIGINT:
            os._exit(EXIT_INTERRUPTED_TWICE)
        if self.at is None:
            self.at, self.signal = time.monotonic(), signum

    def __call__(self) -> bool:
        return self.at is not None

    def check(self) -> None:
        """Stopped if a stop was requested: the safe points of phases without a training loop call it."""
        if self.at is not None:
            raise Stopped(self.name)

    def deadline(self, grace_seconds: float) -> float:
        """time.monotonic() by which the final checkpoint must be committed."""
        return (self.at if self.at is not None else time.monotonic()) + grace_seconds

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "stop request"
