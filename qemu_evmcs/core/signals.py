"""Terminating signals noted, not acted on, while a process has no event loop to act on them.

Why: the launch wrapper and the simulated QEMU both end on SIGINT/SIGTERM/SIGHUP, but only an event loop can act
on one (forward it to the emulator, shut the VM down). Outside that loop, before it (the emulator already
started, QEMU's start-up) and after it (the clean-up, exit handlers writing cache entries), Python's defaults
would raise ``KeyboardInterrupt`` wherever the process is, or kill it without its clean-up. QEMU installs its
handler early and keeps it until exit (``os_setup_signal_handling``), so a signal there is a request served
later or one already made. Both processes note the signals the same way: :class:`NotedSignals`.
"""

from __future__ import annotations

import signal
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Self


class NotedSignals:
    """While entered, each of ``signals`` is appended to :attr:`received` instead of acting.

    An event loop that takes the signals over serves the first one noted before it ran; when it gives them
    up, :meth:`take_back` puts the noting handler back. On leaving, the handlers found on entry return, or
    with ``ignore_on_exit`` (the process ends right after: its entry point) the signals are ignored, because
    Python's finalization gives a Python handler back to the default action, which would kill the process
    while it flushes its caches.
    """

    def __init__(self, signals: Sequence[int], *, ignore_on_exit: bool) -> None:
        self.signals = tuple(signals)
        self.ignore_on_exit = ignore_on_exit
        #: The signals noted since entering, in order.
        self.received: list[int] = []
        self._saved: dict[int, Any] = {}

    def _note(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    def install(self) -> None:
        """The noting handler for each signal."""
        for sig in self.signals:
            signal.signal(sig, self._note)

    def take_back(self, release: Callable[[], object]) -> None:
        """Run ``release`` (an event loop giving its handlers up: asyncio leaves Python's defaults behind), then
        put the noting handler back; the signals are blocked in between, so one that comes meanwhile waits for
        the noting handler instead of raising ``KeyboardInterrupt`` or killing the process."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        try:
            release()
            self.install()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def __enter__(self) -> Self:
        self._saved = {sig: signal.getsignal(sig) for sig in self.signals}
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN if self.ignore_on_exit else self._saved[sig])
