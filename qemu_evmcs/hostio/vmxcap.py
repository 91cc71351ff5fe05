"""Render and parse the text output of QEMU's ``scripts/kvm/vmxcap``.

vmxcap prints, for each section in registry ``vmxcap_order``, the section title
on its own line followed by ``'  %-40s %s' % (label, value)`` lines:

- control sections (pin, primary, secondary, exit, entry) print one of
  ``yes`` (may be 0 or 1), ``no`` (must be 0), ``forced`` (must be 1) or
  ``default`` (must be 1 in the non-TRUE MSR, optional in the TRUE MSR) per
  named control bit;
- the tertiary section (a 64-bit allowed-1 MSR) prints ``yes``/``no``;
- info sections (Basic, Misc, VPID/EPT, VM Functions) print ``  Hex: 0x%x``
  first, then ``yes``/``no`` per bit and integers for multi-bit fields.

A missing or unreadable MSR is printed by vmxcap as 0, and so is an MSR absent
from a profile here.

:func:`parse` reverses :func:`render`: the info MSRs come from the ``Hex:``
line (cross-checked against the per-bit lines), the control MSRs are rebuilt
from the per-bit words. Bits vmxcap does not show are rebuilt by convention:
a default1 bit of the word (registry ``always_on``) that vmxcap does not name
is must-be-1 in both the TRUE and non-TRUE MSR; any other unnamed bit is 0.
CR0/CR4 fixed MSRs and VMCS_ENUM are not in vmxcap output and cannot be
recovered. Which MSRs exist is decided as on hardware (SDM A.1-A.11): the TRUE
controls only when BASIC bit "IA32_VMX_TRUE_*_CTLS support" is set, the
secondary controls only when primary "Activate secondary control" may be 1, and
so on; a BASIC value of 0 means "no VMX at all" (an empty MSR set).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import MASK32, MASK64, Feature, Field_, Msr, Registry, registry
from qemu_evmcs.core.regexcache import regex

#: vmxcap's line format: two spaces, label padded to 40 columns, one space, value.
LINE_FORMAT = "  %-40s %s"

_CONTROL_VALUES = ("yes", "no", "forced", "default")

#: Words whose 64-bit allowed-1 MSR vmxcap prints with its ``Misc`` class (``Hex:`` line, yes/no per bit)
#: rather than ``Allowed1Control``: VM Functions. (The tertiary controls use ``Allowed1Control``.)
_PRINTED_AS_INFO = frozenset({"vmfunc"})


@dataclass(frozen=True)
class Section:
    """One vmxcap section as this module understands it."""

    word: str
    title: str
    kind: str                 # "control", "allowed1" or "info"
    msr: str | None        # the MSR vmxcap reads (non-TRUE for controls)
    true_msr: str | None   # the TRUE twin vmxcap also reads, if any
    features: tuple[Feature, ...]
    fields: tuple[Field_, ...]


def sections(reg: Registry | None = None) -> list[Section]:
    """The vmxcap sections in print order, derived from the registry."""
    reg = reg or registry()
    out: list[Section] = []
    for word in reg.vmxcap_order:
        msrs = reg.msrs_of_word(word)
        primary: Msr | None = None
        for m in msrs:
            if not m.is_true_form:
                primary = m
        if primary is None:
            raise InputError(f"registry word {word!r} has no non-TRUE MSR", file="registry.yaml", key=word)
        kind = {"ctl": "control", "allowed1": "allowed1"}.get(primary.layout, "info")
        if word in _PRINTED_AS_INFO:
            kind = "info"
        feats = tuple(f for f in reg.word_features(word) if f.vmxcap)
        fields = tuple(sorted((x for x in reg.fields if x.word == word), key=lambda x: x.lo))
        out.append(Section(word=word, title=reg.words[word].vmxcap, kind=kind, msr=primary.name,
                           true_msr=primary.true, features=feats, fields=fields))
    return out


# --------------------------------------------------------------------------- render

def _control_value(bit: int, lo: int, hi: int, tlo: int, thi: int, has_true: bool) -> str:
    """vmxcap's ``Control.show`` decision for one bit (``?`` for a must-be-1 bit that may not be 1)."""
    m = 1 << bit
    zero = not (lo & m)
    one = bool(hi & m)
    if has_true and not (tlo & m) and (thi & m) and one and not zero:
        return "default"
    if zero and not one:
        return "no"
    if one and not zero:
        return "forced"
    if one and zero:
        return "yes"
    return "?"


def _info_lines(sec: Section, value: int) -> list[tuple[int, str, str]]:
    rows: list[tuple[int, str, str]] = []
    for feat in sec.features:
        rows.append((feat.bit, feat.vmxcap or feat.name, "yes" if value >> feat.bit & 1 else "no"))
    for fld in sec.fields:
        width = fld.hi - fld.lo + 1
        rows.append((fld.lo, fld.vmxcap, str(value >> fld.lo & ((1 << width) - 1))))
    rows.sort(key=lambda r: r[0])
    return rows


def render(msrs: Mapping[str, int], reg: Registry | None = None, unknown: Collection[str] = ()) -> str:
    """vmxcap's text for these MSR values (absent MSRs read as 0, as vmxcap does).

    Sections of ``unknown`` MSRs (a partial profile's) are left out, as in the paste they came from: printing
    them as 0 would turn "not known" into "the CPU has none of these", and the import would believe it.
    """
    reg = reg or registry()
    lines: list[str] = []
    for sec in sections(reg):
        if sec.msr in unknown or sec.true_msr in unknown:
            continue
        lines.append(sec.title)
        value = msrs.get(sec.msr or "", 0)
        if sec.kind == "info":
            lines.append(f"  Hex: 0x{value:x}")
            for _, label, text in _info_lines(sec, value):
                lines.append(LINE_FORMAT % (label, text))
            continue
        if sec.kind == "allowed1":
            lo, hi, tlo, thi = 0, value, 0, 0
        else:
            lo, hi = value & MASK32, value >> 32 & MASK32
            tval = msrs.get(sec.true_msr or "", 0)
            tlo, thi = tval & MASK32, tval >> 32 & MASK32
        for feat in sec.features:
            lines.append(LINE_FORMAT % (feat.vmxcap, _control_value(feat.bit, lo, hi, tlo, thi,
                                                                    sec.true_msr is not None)))
    return "\n".join(lines) + "\n"


def render_profile(profile: HostProfile) -> str:
    """:func:`render` of a :class:`~qemu_evmcs.core.profile.HostProfile`'s ``msrs`` (its unknown MSRs left out)."""
    return render(profile.msrs, unknown=profile.unknown_msrs)


# --------------------------------------------------------------------------- parse

def _split_line(line: str) -> tuple[str, str] | None:
    """``(label, value)`` of a ``'  %-40s %s'`` line, or None.

    Same result as the regex ``^  (\\S.*?)\\s+(\\S+)\\s*$``, but linear: that regex backtracks
    quadratically on a long run of blanks (a hostile 4 MB line took hours).
    """
    if not line.startswith("  ") or len(line) < 3 or line[2].isspace():
        return None
    parts = line[2:].rsplit(None, 1)
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


_HEX = regex(r"^  Hex:\s+(0[xX][0-9a-fA-F]+)\s*$")


def looks_like_vmxcap(text: str, reg: Registry | None = None) -> bool:
    """Does ``text`` contain at least one vmxcap section title followed by a vmxcap line?"""
    titles = {s.title for s in sections(reg)}
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.strip() in titles and lines[i + 1].strip() not in titles:
            return True
    return False


def _is_entry_of(sec: Section, line: str) -> bool:
    """Is the unindented ``line`` one of ``sec``'s entries (its ``Hex:`` line or a known label and a value)?"""
    if line.startswith("Hex:"):
        return sec.kind == "info"
    parts = line.rsplit(None, 1)
    labels = {f.vmxcap for f in sec.features} | {f.vmxcap for f in sec.fields}
    return len(parts) == 2 and parts[0] in labels


@dataclass
class _Seen:
    """Where an MSR's section was seen in the vmxcap text (for the error that names a line)."""

    title_line: int
    hex_value: int | None = None
    hex_line: int | None = None
    values: dict[str, tuple[str, int]] | None = None


def parse(text: str, *, file: str | None = None, reg: Registry | None = None) -> dict[str, int]:
    """MSR values from vmxcap text (see the module docstring for how each MSR is rebuilt).

    :raise InputError: naming ``file``, the line and the label for anything vmxcap cannot have printed.
    """
    reg = reg or registry()
    secs = sections(reg)
    by_title = {s.title: s for s in secs}
    seen: dict[str, _Seen] = {}
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" ") and current is not None and _is_entry_of(current, line.strip()):
            line = "  " + line.strip()  # a forum paste lost vmxcap's indentation
        elif line.startswith(" ") and line.strip() in by_title:
            line = line.strip()         # ... or indented everything (a Markdown code block): a title is a title
        elif line.startswith(" "):
            line = "  " + line.strip()  # any other indentation is vmxcap's two spaces
        if not line.startswith(" "):
            title = line.strip()
            if title not in by_title:
                raise InputError(f"unknown vmxcap section {title!r} (known: {', '.join(by_title)})",
                                 file=file, line=lineno)
            if title in seen:
                raise InputError(f"section {title!r} appears twice (first at line {seen[title].title_line})",
                                 file=file, line=lineno)
            current = by_title[title]
            seen[title] = _Seen(title_line=lineno, values={})
            continue
        if current is None:
            raise InputError("indented line before any vmxcap section title", file=file, line=lineno)
        st = seen[current.title]
        assert st.values is not None
        hm = _HEX.match(line)
        if hm:
            if current.kind != "info":
                raise InputError(f"section {current.title!r} has no Hex: line in vmxcap output",
                                 file=file, line=lineno)
            if st.hex_value is not None:
                raise InputError("second Hex: line in this section", file=file, key=current.title, line=lineno)
            val = int(hm.group(1), 16)
            if val > MASK64:
                raise InputError(f"Hex value {hm.group(1)} does not fit in 64 bits", file=file,
                                 key=current.title, line=lineno)
            st.hex_value, st.hex_line = val, lineno
            continue
        lm = _split_line(line)
        if lm is None:
            raise InputError(f"not a vmxcap line: {line.strip()[:60]!r}", file=file, key=current.title, line=lineno)
        label, value = lm
        if label in st.values:
            raise InputError(f"label {label!r} appears twice in this section", file=file, key=current.title,
                             line=lineno)
        st.values[label] = (value, lineno)
    if not seen:
        raise InputError("no vmxcap section found", file=file)
    if current is not None and _cut_short(current, seen[current.title]):
        # The paste ends inside its last section (a forum post cut short): its unread lines are not "no", they
        # are unknown. Dropping the section lets the enumeration check name its MSRs (refused, or with
        # --partial recorded as unknown) instead of rebuilding values from half the lines.
        del seen[current.title]
    return _rebuild(secs, seen, file, reg)


def _cut_short(sec: Section, st: _Seen) -> bool:
    """Whether the section the text ends in lacks lines vmxcap prints: an info section without its ``Hex:``
    line and some field, a control section without some control. (A section in the middle of the text is
    taken as printed by an older vmxcap, whose lists were shorter: its missing controls read as "no".)"""
    assert st.values is not None
    if sec.kind == "info":
        return st.hex_value is None and len(st.values) < len(sec.features) + len(sec.fields)
    return len(st.values) < len(sec.features)


def _label_error(sec: Section, label: str, file: str | None, line: int) -> InputError:
    return InputError(f"unknown label {label!r} in section {sec.title!r}", file=file, key=sec.title, line=line)


def _parse_info(sec: Section, st: _Seen, file: str | None) -> int:
    assert st.values is not None
    feats = {f.vmxcap: f for f in sec.features}
    fields = {f.vmxcap: f for f in sec.fields}
    rebuilt = 0
    for label, (text, line) in st.values.items():
        if label in feats:
            if text not in ("yes", "no"):
                raise InputError(f"expected yes or no, got {text!r}", file=file, key=f"{sec.title}: {label}",
                                 line=line)
            if text == "yes":
                rebuilt |= feats[label].mask
        elif label in fields:
            fld = fields[label]
            try:
                v = int(text)
            except ValueError:
                raise InputError(f"expected an integer, got {text!r}", file=file, key=f"{sec.title}: {label}",
                                 line=line) from None
            if v < 0 or v >= 1 << (fld.hi - fld.lo + 1):
                raise InputError(f"value {v} does not fit in bits {fld.lo}-{fld.hi}", file=file,
                                 key=f"{sec.title}: {label}", line=line)
            rebuilt |= v << fld.lo
        else:
            raise _label_error(sec, label, file, line)
    if st.hex_value is None:
        return rebuilt
    # Cross-check: every printed line must agree with the Hex value.
    for label, (text, line) in st.values.items():
        if label in feats:
            if bool(st.hex_value & feats[label].mask) != (text == "yes"):
                raise InputError(f"{label!r} says {text} but Hex: 0x{st.hex_value:x} (line {st.hex_line}) "
                                 f"disagrees", file=file, key=sec.title, line=line)
        else:
            fld = fields[label]
            width = fld.hi - fld.lo + 1
            if st.hex_value >> fld.lo & ((1 << width) - 1) != int(text):
                raise InputError(f"{label!r} says {text} but Hex: 0x{st.hex_value:x} (line {st.hex_line}) "
                                 f"disagrees", file=file, key=sec.title, line=line)
    return st.hex_value


def _parse_control(sec: Section, st: _Seen, file: str | None, reg: Registry) -> tuple[int, int, int, int, bool]:
    """(lo, hi, true_lo, true_hi, any_default) of a control section, unnamed bits filled by convention."""
    assert st.values is not None
    feats = {f.vmxcap: f for f in sec.features}
    always_on = reg.words[sec.word].always_on
    named = 0
    for f in sec.features:
        named |= f.mask
    unnamed_on = always_on & ~named & MASK32
    lo = tlo = hi = unnamed_on
    any_default = False
    allowed = ("yes", "no") if sec.kind == "allowed1" else _CONTROL_VALUES
    for label, (text, line) in st.values.items():
        feat = feats.get(label)
        if feat is None:
            raise _label_error(sec, label, file, line)
        if text not in allowed:
            raise InputError(f"expected {', '.join(allowed)}, got {text!r}", file=file,
                             key=f"{sec.title}: {label}", line=line)
        if text == "default" and sec.true_msr is None:
            raise InputError("'default' is only printed for controls with a TRUE MSR", file=file,
                             key=f"{sec.title}: {label}", line=line)
        m = feat.mask
        if text == "yes":
            hi |= m
        elif text == "forced":
            lo |= m
            tlo |= m
            hi |= m
        elif text == "default":
            lo |= m
            hi |= m
            any_default = True
    return lo, hi, tlo, hi, any_default


def _rebuild(secs: list[Section], seen: Mapping[str, _Seen], file: str | None, reg: Registry) -> dict[str, int]:
    by_word = {s.word: s for s in secs}
    info: dict[str, int] = {}
    ctl: dict[str, tuple[int, int, int, int, bool]] = {}
    for sec in secs:
        st = seen.get(sec.title)
        if st is None:
            continue
        if sec.kind == "info":
            info[sec.word] = _parse_info(sec, st, file)
        else:
            ctl[sec.word] = _parse_control(sec, st, file, reg)

    out: dict[str, int] = {}
    basic_sec = by_word.get("basic")
    basic = info.get("basic")
    if basic is not None and basic == 0:
        # vmxcap printed zeros everywhere: this machine has no readable VMX MSRs.
        for w, v in info.items():
            if v:
                sec = by_word[w]
                raise InputError(f"section {sec.title!r} is non-zero but Basic VMX Information is 0",
                                 file=file, key=sec.title)
        return out
    true_feat = reg.feature("vmx-true-ctls")
    if basic is not None:
        has_true = bool(basic & true_feat.mask)
    else:
        has_true = any(c[4] for c in ctl.values())
    if basic_sec is not None and basic is not None and basic_sec.msr:
        out[basic_sec.msr] = basic

    def ctl_present(word: str, enabler: str | None) -> bool:
        if word not in ctl:
            return False
        if enabler is None:
            return True
        feat = reg.feature(enabler)
        src = ctl.get(feat.word)
        return src is not None and bool(src[1] & feat.mask)

    enablers = {"secondary": "vmx-secondary-ctls", "tertiary": "vmx-tertiary-ctls"}
    for sec in secs:
        if sec.kind == "info" or sec.msr is None:
            continue
        lo, hi, tlo, thi, _ = ctl.get(sec.word, (0, 0, 0, 0, False))
        present = ctl_present(sec.word, enablers.get(sec.word))
        if not present and (lo or hi) and sec.word in ctl:
            present = True  # vmxcap read a non-zero value: the MSR exists even if the enabler says otherwise
        if not present:
            continue
        if sec.kind == "allowed1":
            out[sec.msr] = hi
            continue
        out[sec.msr] = (lo & MASK32) | (hi & MASK32) << 32
        if sec.true_msr and has_true:
            out[sec.true_msr] = (tlo & MASK32) | (thi & MASK32) << 32
    # Info MSRs other than BASIC exist when non-zero or when the control that enables them may be 1.
    info_enablers = {"ept_vpid": ("vmx-ept", "vmx-vpid"), "vmfunc": ("vmx-vmfunc",)}
    for isec in secs:
        if isec.kind != "info" or isec.word == "basic" or isec.msr is None or isec.word not in info:
            continue
        value = info[isec.word]
        enablers_of = info_enablers.get(isec.word)
        if enablers_of is None or value or any(_ctl_allows(ctl, reg, n) for n in enablers_of):
            out[isec.msr] = value
    return out


def _ctl_allows(ctl: Mapping[str, tuple[int, int, int, int, bool]], reg: Registry, name: str) -> bool:
    feat = reg.get(name)
    if feat is None:
        return False
    src = ctl.get(feat.word)
    return src is not None and bool(src[1] & feat.mask)


def visible_mask(msr_name: str, reg: Registry | None = None) -> int:
    """The bits of an MSR that survive any vmxcap round trip: all 64 of an info MSR (the ``Hex:`` line), the
    named bits (both halves) of a control MSR. Unnamed bits only survive when they follow the convention."""
    reg = reg or registry()
    m = reg.msrs[msr_name]
    if m.word is None or m.word not in reg.vmxcap_order:
        return 0
    for sec in sections(reg):
        if sec.word != m.word:
            continue
        if sec.kind == "info":
            return MASK64
        named = 0
        for f in sec.features:
            named |= f.mask
        if sec.kind == "allowed1":
            return named
        return (named & MASK32) | (named & MASK32) << 32
    return 0
