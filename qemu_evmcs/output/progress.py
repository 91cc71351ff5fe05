"""A progress bar on stderr, drawn only when stderr is a terminal.

Long fleet runs (100,000 profiles) print a one-line bar that redraws in place; when stderr is a file or a
pipe (CI logs, ``2>err.txt``) nothing at all is written, so logs and the ``error:`` contract stay clean.
Updates are cheap (a counter and, at most every 0.1 s, one write), so callers may call
:meth:`Progress.update` per item.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Self, TextIO


class Progress:
    """``with Progress(total, "loading") as bar: bar.update(n)``.

    :param total: the amount of work (items, bytes); ``None`` or 0 when unknown (a counter is shown).
    :param label: a few words before the bar.
    :param stream: where to draw (default ``sys.stderr``).
    :param enabled: force on or off; by default on exactly when ``stream.isatty()``.
    :param unit: unit of ``total`` for the counter (``"B"`` shows MB).
    """

    INTERVAL = 0.1
    WIDTH = 30

    def __init__(self, total: int | None, label: str, *, stream: TextIO | None = None,
                 enabled: bool | None = None, unit: str = "") -> None:
        self.stream: TextIO = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = enabled
        self.total = total or 0
        self.label = label
        self.unit = unit
        self.done = 0
        #: Each update counts this many times (a part of the work stands for the whole, e.g. while other
        #: processes load the other parts).
        self.scale = 1.0
        self._last = 0.0
        self._drawn = False
        self._start = time.monotonic()

    def update(self, amount: int = 1) -> None:
        """Record ``amount`` more units of work; redraw if due."""
        self.done += amount if self.scale == 1.0 else int(amount * self.scale)
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.INTERVAL:
            self._last = now
            self._draw(now)

    def set_total(self, total: int) -> None:
        """Change the total (when it becomes known late)."""
        self.total = total

    def _fmt(self, n: int) -> str:
        if self.unit == "B":
            return f"{n / 1e6:.1f} MB"
        return f"{n}{(' ' + self.unit) if self.unit else ''}"

    def render(self, now: float | None = None) -> str:
        """The bar's text (without the carriage return)."""
        elapsed = (now if now is not None else time.monotonic()) - self._start
        if self.total > 0:
            frac = min(1.0, self.done / self.total)
            full = int(frac * self.WIDTH)
            bar = "#" * full + "-" * (self.WIDTH - full)
            return f"{self.label} [{bar}] {frac * 100:5.1f}% {self._fmt(self.done)} {elapsed:5.1f}s"
        return f"{self.label} {self._fmt(self.done)} {elapsed:5.1f}s"

    def _draw(self, now: float) -> None:
        try:
            self.stream.write("\r" + self.render(now) + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        except (OSError, ValueError):
            self.enabled = False

    def close(self) -> None:
        """Erase the bar (the terminal line is left empty)."""
        if self.enabled and self._drawn:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        self._drawn = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
