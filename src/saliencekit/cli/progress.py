"""Progress of the commands' long steps: a tqdm bar when stderr is a terminal, otherwise (piped,
logged, in CI) a line on stderr every ``LINE_SECONDS`` seconds and one when the step ends.

``explain`` feeds it the engine's progress callback (gradient rows done, per chunk); a method
with an ``iterations`` option (I-GOS) is shown in iterations (rows / rows per iteration).
``evaluate`` counts images x methods.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, Optional, TextIO

LINE_SECONDS = 5.0


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class Progress:
    """One step's progress: ``update(n)`` adds ``n`` units (e.g. rows); ``total`` in the same units
    (``None`` when unknown); ``per`` units make one shown unit (``unit``); ``close()`` ends it."""

    def __init__(self, total: Optional[float], desc: str, unit: str = "rows", per: float = 1.0,
                 stream: Optional[TextIO] = None, every: Optional[float] = None, tty: Optional[bool] = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total = total
        self.desc, self.unit, self.per = desc, unit, max(float(per), 1e-12)
        self.every = LINE_SECONDS if every is None else every
        self.done = 0.0
        self.start = time.monotonic()
        self.last_line = self.start
        self.lines = 0
        self.closed = False
        is_tty = getattr(self.stream, "isatty", None)
        self.tty = bool(is_tty and is_tty()) if tty is None else tty
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            shown = None if total is None else max(1, round(total / self.per))
            self.bar = tqdm(total=shown, desc=desc, unit=f" {unit}", file=self.stream, dynamic_ncols=True,
                            leave=True)

    def shown(self) -> int:
        """Units done so far (whole units, at most the total)."""
        n = int(self.done / self.per + 1e-9)
        if self.total is not None:
            n = min(n, max(1, round(self.total / self.per)))
        return n

    def update(self, n: float = 1) -> None:
        before = self.shown()
        self.done += n
        if self.bar is not None:
            if self.shown() != before:
                self.bar.update(self.shown() - before)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        if final:
            text = f"{self.desc}: done, {self.shown()} {self.unit} in {_duration(elapsed)}"
        elif self.total:
            total = max(1, round(self.total / self.per))
            frac = min(1.0, self.done / self.total)
            left = f", about {_duration(elapsed * (1 - frac) / frac)} left" if frac > 0 else ""
            text = f"{self.desc}: {self.shown()}/{total} {self.unit} ({frac:.0%}), {_duration(elapsed)}{left}"
        else:
            text = f"{self.desc}: {self.shown()} {self.unit}, {_duration(elapsed)}"
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines += 1

    def abandon(self) -> None:
        """End a step that failed: the bar closes, no final line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.closed = True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.lines or time.monotonic() - self.start >= self.every:
            self._line(time.monotonic(), final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def method_progress(spec: Any, options: Dict[str, Any], n_images: int, desc: str,
                    stream: Optional[TextIO] = None) -> Progress:
    """Progress of one ``explain`` call of the method ``spec`` (a ``MethodSpec``) on ``n_images``:
    in rows from its cost estimate, or in iterations when the method has an ``iterations`` option."""
    per_image = spec.rows_per_image(options)
    total = per_image * n_images if per_image else None
    merged = {**spec.defaults, **options}
    iterations = merged.get("iterations")
    if total and isinstance(iterations, int) and not isinstance(iterations, bool) and iterations > 0:
        return Progress(total, desc, unit="iterations", per=total / iterations, stream=stream)
    return Progress(total, desc, unit="rows", stream=stream)


__all__ = ["LINE_SECONDS", "Progress", "method_progress"]
