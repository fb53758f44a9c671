"""Wall-clock seconds per phase of a run (fit, training, validation, sanity check, test), for the
run report's timing table."""

from __future__ import annotations

import time


class PhaseClock:
    """``start(phase)`` / ``stop(phase)`` add up the seconds of each phase; :meth:`rows` tabulates
    them. Validation runs inside the training epochs, so the table takes it out of them."""

    def __init__(self) -> None:
        self.created = time.monotonic()
        self.seconds: dict[str, float] = {}
        self._since: dict[str, float] = {}

    def start(self, phase: str) -> None:
        self._since[phase] = time.monotonic()

    def stop(self, phase: str) -> None:
        if phase in self._since:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - self._since.pop(phase)

    def stop_all(self) -> None:
        for phase in list(self._since):
            self.stop(phase)

    def rows(self) -> list[tuple[str, float]]:
        s, wall = self.seconds, time.monotonic() - self.created
        train = s["train"] - s.get("val", 0.0) if "train" in s else None
        other = s.get("fit", 0.0) - sum(v or 0.0 for v in (s.get("sanity"), train, s.get("val")))
        rows = [("wall time, since the trainer was built", wall),
                ("fit", s.get("fit")), ("· training (without validation)", train), ("· validation", s.get("val")),
                ("· sanity check", s.get("sanity")),
                ("· other (setup, feature caches, checkpoints, hooks)", other if "fit" in s else None),
                ("test", s.get("test")),
                ("outside fit and test (before, between and after them)",
                 wall - s.get("fit", 0.0) - s.get("test", 0.0))]
        return [(name, v) for name, v in rows if v is not None]
