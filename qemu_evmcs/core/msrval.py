"""Reading features out of VMX MSR values, and composing values from features.

Why separate from the registry: the registry says *where* a bit lives; this
module knows the MSR layouts (allowed-0/allowed-1 halves, 64-bit allowed-1
bitmaps, TRUE vs non-TRUE default1 classes) and turns a set of MSR values into
the set of features a reader of those MSRs may enable, and back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from qemu_evmcs.core.registry import MASK32, MASK64, Feature, Registry, registry


MsrValues = Mapping[str, int]


def allowed0(value: int) -> int:
    """Bits 31:0 of a control MSR: a set bit must be 1."""
    return value & MASK32


def allowed1(value: int) -> int:
    """Bits 63:32 of a control MSR: a set bit may be 1."""
    return (value >> 32) & MASK32


def ctl_value(allowed0_bits: int, allowed1_bits: int) -> int:
    """Compose a control MSR from its halves."""
    return (allowed0_bits & MASK32) | ((allowed1_bits & MASK32) << 32)


def word_source_msr(word: str, msrs: MsrValues, reg: Registry | None = None) -> str | None:
    """The MSR whose value defines ``word`` in ``msrs``: QEMU's choice (the TRUE form) when present,
    else the non-TRUE form. ``None`` if the profile has neither."""
    reg = reg or registry()
    w = reg.words[word]
    candidates = []
    if w.qemu_msr:
        candidates.append(w.qemu_msr)
    candidates += [m.name for m in reg.msrs_of_word(word)]
    for name in candidates:
        if name in msrs:
            return name
    return None


def word_bits(word: str, msrs: MsrValues, reg: Registry | None = None) -> int:
    """The bits of ``word`` a reader may set: allowed-1 half for control words, the plain value otherwise."""
    reg = reg or registry()
    src = word_source_msr(word, msrs, reg)
    if src is None:
        return 0
    value = msrs[src]
    if reg.msrs[src].layout == "ctl":
        return allowed1(value)
    return value


def feature_present(feat: Feature, msrs: MsrValues, reg: Registry | None = None) -> bool:
    """Is the feature's bit set (allowed-1 for controls) in these MSR values?"""
    return bool(word_bits(feat.word, msrs, reg) & feat.mask)


def feature_set(msrs: MsrValues, reg: Registry | None = None) -> frozenset[str]:
    """Canonical names of every registry feature present in ``msrs``."""
    reg = reg or registry()
    words: dict[str, int] = {w: word_bits(w, msrs, reg) for w in reg.words}
    return frozenset(f.name for f in reg.features.values() if words[f.word] & f.mask)


def names_to_word_masks(names: Iterable[str], reg: Registry | None = None) -> dict[str, int]:
    """Group feature names into ``{word: mask}``."""
    reg = reg or registry()
    out: dict[str, int] = {}
    for name in names:
        feat = reg.feature(name)
        out[feat.word] = out.get(feat.word, 0) | feat.mask
    return out


def hex64(value: int) -> str:
    """``0x`` + 16 lowercase hex digits: the project's one rendering of an MSR value."""
    return f"0x{value:016x}"


def msrs_from_features(features: Iterable[str]) -> dict[str, int]:
    """VMX MSR values (TRUE and non-TRUE forms) in which exactly ``features`` are available.

    Control MSRs get the word's default1 bits as must-be-1 in the non-TRUE form (SDM A.3), so the values pass
    profile validation. Useful for what-if hosts and tests.
    """
    reg = registry()
    per_word = names_to_word_masks(features, reg)
    out: dict[str, int] = {}
    for msr in reg.msrs.values():
        if msr.word is None:
            continue
        bits = per_word.get(msr.word, 0)
        if msr.layout == "ctl":
            always = reg.words[msr.word].always_on
            out[msr.name] = ctl_value(0 if msr.is_true_form else always, bits | always)
        else:
            out[msr.name] = bits & MASK64
    return out
