"""Parse QEMU's CPU feature warnings (stderr) into structured data.

Why: QEMU tells *which* requested feature it dropped and where the bit lives
only in human-oriented warnings (see ``x86_cpu_filter_features`` /
``mark_unavailable_features`` in target/i386/cpu.c)::

    qemu-system-x86_64: warning: host doesn't support requested feature: MSR(48DH).vmx-posted-intr [bit 7]
    qemu-system-x86_64: warning: TCG doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]
    qemu-system-x86_64: warning: This feature depends on other features that were not requested:
        MSR(48BH).vmx-ept [bit 1]   (one line in QEMU's output)
    qemu-system-x86_64: warning: TCG doesn't support requested feature: MSR(48CH) [bit 14]

The last form (no ``.name``) is an unnamed bit copied from the model (seen
verbatim with QEMU 7.2 and ``Skylake-Server-v5,vmx=on``). An optional
``-msg timestamp=on`` prefix (libvirt sets it) is accepted.
"""

from __future__ import annotations

from qemu_evmcs.core.regexcache import regex
from collections.abc import Iterable
from dataclasses import asdict, dataclass

#: ``kind`` of a warning about a feature the accelerator (KVM host, TCG, HVF) cannot provide.
KIND_UNSUPPORTED = "unsupported"
#: ``kind`` of a warning about a feature dropped because a feature it depends on is off.
KIND_DEPENDENCY = "dependency"

_WARNING_RE = regex(
    r"^(?:(?P<ts>\d{4}-\d\d-\d\dT\S+)\s+)?"
    r"(?:(?P<prog>[^\s:][^:]*?):\s+)?"
    r"warning:\s+"
    r"(?:(?P<accel>\S+) doesn't support requested feature"
    r"|(?P<dep>This feature depends on other features that were not requested)):\s+"
    r"(?P<desc>CPUID\.(?P<leaf>[0-9A-Fa-f]+)H:(?P<reg>[A-Z0-9]+)|MSR\((?P<msr>[0-9A-Fa-f]+)H\))"
    r"(?:\.(?P<name>\S+))?"
    r"\s+\[bit\s+(?P<bit>\d+)\]\s*$"
)


@dataclass(frozen=True)
class FeatureWarning:
    """One parsed feature warning.

    :ivar kind: :data:`KIND_UNSUPPORTED` or :data:`KIND_DEPENDENCY`.
    :ivar accel: who cannot provide it, as QEMU words it (``host`` for KVM/HVF,
        ``TCG``); None for dependency warnings.
    :ivar register: the register description verbatim: ``CPUID.01H:ECX`` or ``MSR(48DH)``.
    :ivar msr: MSR index for MSR feature words, else None.
    :ivar cpuid_leaf: CPUID leaf (EAX input) for CPUID feature words, else None.
    :ivar cpuid_register: ``EAX``..``EDX`` for CPUID words, else None.
    :ivar feature: QEMU's property name (``vmx-posted-intr``), None for an unnamed bit.
    :ivar bit: bit number within the feature word (0..63).
    :ivar line: the stderr line, stripped.
    """

    kind: str
    accel: str | None
    register: str
    msr: int | None
    cpuid_leaf: int | None
    cpuid_register: str | None
    feature: str | None
    bit: int
    line: str

    @property
    def message(self) -> str:
        """The warning text after ``warning:`` (what QEMU said, without program name)."""
        _, _, rest = self.line.partition("warning:")
        return rest.strip()

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (MSR index also as ``0x48d`` text for humans)."""
        d: dict[str, object] = asdict(self)
        d["msr_hex"] = f"0x{self.msr:x}" if self.msr is not None else None
        return d


def parse_warning(line: str) -> FeatureWarning | None:
    """Parse one stderr line; None if it is not a CPU feature warning."""
    text = line.strip()
    m = _WARNING_RE.match(text)
    if m is None:
        return None
    msr = m.group("msr")
    leaf = m.group("leaf")
    return FeatureWarning(
        kind=KIND_DEPENDENCY if m.group("dep") else KIND_UNSUPPORTED,
        accel=m.group("accel"),
        register=m.group("desc"),
        msr=int(msr, 16) if msr is not None else None,
        cpuid_leaf=int(leaf, 16) if leaf is not None else None,
        cpuid_register=m.group("reg"),
        feature=m.group("name"),
        bit=int(m.group("bit")),
        line=text,
    )


def parse_warnings(text: str | Iterable[str]) -> list[FeatureWarning]:
    """All feature warnings in a stderr text (or iterable of lines), in order, without repeats."""
    lines = text.splitlines() if isinstance(text, str) else text
    out: list[FeatureWarning] = []
    seen: set[tuple[str, str, str | None, int]] = set()
    for line in lines:
        w = parse_warning(line)
        if w is None:
            continue
        # QEMU repeats a warning (without the program prefix) when a QMP
        # command such as query-cpu-model-expansion re-expands the model.
        key = (w.kind, w.register, w.feature, w.bit)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def warnings_by_feature(warnings: Iterable[FeatureWarning]) -> dict[str, FeatureWarning]:
    """Map feature name -> first warning about it (unnamed bits are left out)."""
    out: dict[str, FeatureWarning] = {}
    for w in warnings:
        if w.feature is not None and w.feature not in out:
            out[w.feature] = w
    return out
