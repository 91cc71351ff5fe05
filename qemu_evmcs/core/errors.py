"""The one root error of qemu-evmcs and its documented subclasses.

Every failure the tools can report derives from :class:`EvmcsError`, in the
style of ``qemu.qmp.error.QMPError``: the error carries structured fields
(file, key, line, host, MSR, bit, layer) so that callers can act on it, and
``str()`` renders the one line the CLI prints after ``error:``.

Tree::

    EvmcsError                      root; never raised directly
     +-- InputError                 bad input or usage          -> exit 2
     +-- KvmError                   a simulated (or real) ioctl failed with errno
     +-- ProbeError                 the live host cannot be probed (no /dev/kvm access, an ioctl fails) -> exit 1
     +-- LaunchError                starting / talking to an emulator failed -> exit 1
     +-- NegativeAnswer             a check whose answer is "no" (a verdict line, not error:) -> exit 1
     +-- QmpCommandError            a simulated QMP command failed (simqemu.qmp_server; becomes the
                                    QMP error reply, never an exit status)

Exit codes used by every command: 0 success, 1 negative answer, 2 bad input
or usage. ``BaseException`` subclasses (``KeyboardInterrupt``,
``asyncio.CancelledError``) are deliberately never wrapped.
"""

from __future__ import annotations



EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_BAD_INPUT = 2

#: Longest ``error:`` line rendered; hostile input (a 4 MB label or key) is cut with a marker, not echoed whole.
MAX_MESSAGE_CHARS = 2000


class EvmcsError(Exception):
    """Ancestor of every exception raised by this package.

    :param message: what went wrong, in one line, without the location.
    :param file: the input file involved, if any.
    :param key: the key (dotted path) in that file, if any.
    :param line: the 1-based line in that file, if known.
    :param host: the host profile name involved, if any.
    :param msr: the MSR name involved, if any.
    :param bit: the bit involved, if any.
    :param layer: the layer responsible (cpu, kvm, evmcs-filter, perf-cpuid-gate, model, qemu).
    """

    exit_code: int = EXIT_BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        host: str | None = None,
        msr: str | None = None,
        bit: int | None = None,
        layer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        self.host = host
        self.msr = msr
        self.bit = bit
        self.layer = layer

    def location(self) -> str:
        """``file:line: key`` (the parts that are known), or ``""``."""
        parts = []
        if self.file is not None:
            loc = self.file
            if self.line is not None:
                loc += f":{self.line}"
            parts.append(loc)
        if self.key is not None:
            parts.append(self.key)
        return ": ".join(parts)

    def __str__(self) -> str:
        loc = self.location()
        text = f"{loc}: {self.message}" if loc else self.message
        # One line, always: the CLI contract is a single ``error:`` line.
        text = " ".join(text.splitlines())
        if len(text) > MAX_MESSAGE_CHARS:
            text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
        return text


class InputError(EvmcsError):
    """Bad input: a file, a key, a value or a command-line argument (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class KvmError(EvmcsError):
    """An ioctl of the (simulated) KVM failed; ``errno`` is the negative errno KVM returns.

    :param errno_name: symbolic name such as ``EINVAL``, ``EBUSY``, ``ENOTTY``.
    """

    exit_code = EXIT_NEGATIVE

    def __init__(self, message: str, *, errno_name: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.errno_name = errno_name


class ProbeError(EvmcsError):
    """The running machine cannot be probed (no /dev/kvm access, not a KVM device, an ioctl failing): exit 1.

    A machine that can be probed but cannot do it (no Intel VMX, nested off) is a :class:`NegativeAnswer`."""

    exit_code = EXIT_NEGATIVE


class LaunchError(EvmcsError):
    """Starting or talking to an emulator failed: exit 1."""

    exit_code = EXIT_NEGATIVE


class NegativeAnswer(EvmcsError):
    """A check ran and its answer is "no" (for example ``--check`` refuses, or a host cannot do eVMCS): exit 1.

    Not an error: the CLI prints it as a verdict line on stdout (``VERDICT: HOST: why``, like negotiate's
    ``no safe answer:``), or with ``--json`` as the documented verdict object (docs/json.md), never as an
    ``error:`` line, which is for bad input and an unusable environment.

    :param verdict: what the answer is, one word (``no-evmcs``, ``no-vmx``, ``source-fails``, ``no-intel-vmx``,
        ``no-nested-vmx``, ``no-vmx-msrs``; ``no`` when nothing more precise applies).
    """

    exit_code = EXIT_NEGATIVE

    def __init__(self, message: str, *, verdict: str = "no", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.verdict = verdict

    def verdict_line(self) -> str:
        """``VERDICT: HOST: why`` (``VERDICT: why`` without a host), one line like every CLI line."""
        who = f"{self.host}: " if self.host else ""
        text = " ".join(f"{self.verdict}: {who}{self.message}".splitlines())
        if len(text) > MAX_MESSAGE_CHARS:
            text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
        return text

    def to_json(self) -> dict[str, object]:
        """The ``verdict`` document of docs/json.md."""
        return {"ok": False, "verdict": self.verdict, "host": self.host, "layer": self.layer,
                "reason": self.message}
