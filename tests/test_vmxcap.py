"""vmxcap rendering and parsing: layout, exact lines, round trips (samples + hypothesis), bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_evmcs.hostio import vmxcap
from qemu_evmcs.cli.commands.host import import_text
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import HostProfile, bundled_profile_dir, load_profile, load_profiles, profile_from_mapping
from qemu_evmcs.core.registry import MASK32, registry

DATA = Path(__file__).parent / "data" / "host"
REG = registry()


def vline(label: str, value: str) -> str:
    """One vmxcap line, written independently of the module's LINE_FORMAT."""
    return f"  {label:<40} {value}"


def sky() -> HostProfile:
    return load_profile(str(Path(bundled_profile_dir()) / "skylake-5.10.yaml"))


def projection(msrs: Any) -> dict[str, int]:
    """What vmxcap can carry: each vmxcap-visible MSR masked to its visible bits (absent = 0)."""
    out = {}
    for name in REG.msr_names():
        mask = vmxcap.visible_mask(name)
        if mask:
            out[name] = msrs.get(name, 0) & mask
    return out


def test_section_order_and_titles() -> None:
    text = vmxcap.render(sky().msrs)
    titles = [line for line in text.splitlines() if not line.startswith(" ")]
    assert titles == [REG.words[w].vmxcap for w in REG.vmxcap_order]
    assert titles[0] == "Basic VMX Information" and titles[-1] == "VM Functions"


def test_skylake_lines_match_vmxcap_semantics() -> None:
    lines = vmxcap.render(sky().msrs).splitlines()
    # Info sections start with the Hex: line, as vmxcap's Misc class prints it.
    assert lines[1] == "  Hex: 0xda040000000004"
    assert vline("Revision", "4") in lines
    assert vline("VMCS size", "1024") in lines
    assert vline("VMCS memory type", "6") in lines
    assert vline("IA32_VMX_TRUE_*_CTLS support", "yes") in lines
    # Pin-based: 0x7f allowed-1 -> posted interrupts (bit 7) "no"; preemption timer "yes".
    assert "  Activate VMX-preemption timer            yes" in lines
    assert "  Process posted interrupts                no" in lines
    # CR3 load/store exiting: must-be-1 in 0x482 (0x0401e172) but not in 0x48e (0x04006172) -> default.
    assert "  CR3-load exiting                         default" in lines
    assert "  CR3-store exiting                        default" in lines
    assert "  Activate tertiary controls               no" in lines
    assert "  Save debug controls                      default" in lines
    # A long label overflows the 40 columns exactly as '%-40s' does.
    assert "  Store EFER.LMA into IA-32e mode guest control yes" in lines
    assert "  Hex: 0x7004c1e7" in lines and "  Hex: 0xf0106334141" in lines and "  Hex: 0x1" in lines
    assert vline("VMX-preemption timer scale (log2)", "7") in lines
    # The tertiary MSR is absent: vmxcap reads it as 0.
    i = lines.index("tertiary processor-based controls")
    assert lines[i + 1] == "  Enable IPI virtualization                no"
    assert lines[i + 2] == "VM-Exit controls"


def test_forced_and_no() -> None:
    msrs = {"IA32_VMX_BASIC": 0xDA040000000004, "IA32_VMX_PINBASED_CTLS": 0x0000002900000017 | (0x16 << 32),
            "IA32_VMX_TRUE_PINBASED_CTLS": 0x0000003F00000001 | (0x16 << 32)}
    msrs["IA32_VMX_TRUE_PINBASED_CTLS"] = (msrs["IA32_VMX_PINBASED_CTLS"] & ~MASK32) | 0x17
    text = vmxcap.render(msrs)
    assert "  External interrupt exiting               forced" in text.splitlines()
    assert "  NMI exiting                              yes" in text.splitlines()
    assert "  Virtual NMIs                             yes" in text.splitlines()
    assert "  Activate VMX-preemption timer            no" in text.splitlines()


@pytest.mark.parametrize("path", sorted(Path(bundled_profile_dir()).glob("*.yaml")), ids=lambda p: p.stem)
def test_samples_round_trip(path: Path) -> None:
    p = load_profile(str(path))
    text = vmxcap.render_profile(p)
    back, fmt = import_text(text, file="x.txt", name=p.name, kernel=p.kernel, vendor=p.vendor)
    assert fmt == "vmxcap"
    assert projection(back.msrs) == projection(p.msrs)
    # Beyond the projection: every vmxcap MSR of the sample comes back bit-exact (unnamed default1 bits included).
    for name, value in p.msrs.items():
        if vmxcap.visible_mask(name):
            assert back.msrs.get(name) == value, name
    assert vmxcap.render(back.msrs) == text


# --------------------------------------------------------------------------- hypothesis

u32 = st.integers(0, MASK32)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def valid_msrs(draw: st.DrawFn) -> dict[str, int]:
    true_bit = REG.feature("vmx-true-ctls").mask
    has_true = draw(st.booleans())
    basic = draw(u64) | 1
    basic = basic | true_bit if has_true else basic & ~true_bit
    msrs = {"IA32_VMX_BASIC": basic}
    for word in ("pinbased", "procbased", "exit", "entry"):
        non_true = next(m for m in REG.msrs_of_word(word) if m.true)
        always_on = REG.words[word].always_on
        hi = draw(u32) | always_on
        tlo = draw(u32) & hi
        msrs[non_true.name] = (tlo | always_on) | hi << 32
        if has_true and non_true.true:
            msrs[non_true.true] = tlo | hi << 32
    hi = draw(u32)
    msrs["IA32_VMX_PROCBASED_CTLS2"] = (draw(u32) & hi) | hi << 32
    for name in ("IA32_VMX_MISC", "IA32_VMX_EPT_VPID_CAP", "IA32_VMX_VMFUNC", "IA32_VMX_PROCBASED_CTLS3"):
        if draw(st.booleans()):
            msrs[name] = draw(u64)
    return msrs


@settings(max_examples=300, deadline=None)
@given(valid_msrs())
def test_round_trip_random_profiles(msrs: dict[str, int]) -> None:
    p = profile_from_mapping({"name": "h", "vendor": "GenuineIntel", "kernel": "6.1", "msrs": msrs})
    text = vmxcap.render_profile(p)
    back, _ = import_text(text, file="h.txt", name="h", kernel="6.1")
    assert projection(back.msrs) == projection(p.msrs)
    assert vmxcap.render(back.msrs) == text


def test_all_zero_means_no_vmx() -> None:
    text = vmxcap.render({})
    assert vmxcap.parse(text) == {}


def test_existence_rules() -> None:
    msrs = dict(sky().msrs)
    got = vmxcap.parse(vmxcap.render(msrs))
    assert "IA32_VMX_PROCBASED_CTLS3" not in got  # tertiary not allowed on Skylake
    assert "IA32_VMX_TRUE_PINBASED_CTLS" in got
    basic_no_true = msrs["IA32_VMX_BASIC"] & ~REG.feature("vmx-true-ctls").mask
    got = vmxcap.parse(vmxcap.render({**msrs, "IA32_VMX_BASIC": basic_no_true}))
    assert not any("TRUE" in n for n in got)


# --------------------------------------------------------------------------- bad input

SKY_TEXT = (DATA / "skylake-vmxcap.txt").read_text()


@pytest.mark.parametrize("mutate,message", [
    (lambda t: t.replace("pin-based controls", "pin based controls"), "unknown vmxcap section 'pin based controls'"),
    (lambda t: t.replace("  NMI exiting                              yes",
                         "  NMI exiting                              maybe"),
     "pin-based controls: NMI exiting: expected yes, no, forced, default, got 'maybe'"),
    (lambda t: t.replace("  Revision                                 4",
                         "  Revision                                 x"),
     "Basic VMX Information: Revision: expected an integer, got 'x'"),
    (lambda t: t.replace("  Revision                                 4",
                         "  Revision                                 5"),
     "Basic VMX Information: 'Revision' says 5 but Hex: 0xda040000000004 (line 2) disagrees"),
    (lambda t: t.replace("  NMI exiting  ", "  NMI exitting "), "pin-based controls: unknown label 'NMI exitting'"),
    (lambda t: "  stray\n" + t, "indented line before any vmxcap section title"),
    (lambda t: t.replace("  Enable EPT                               yes",
                         "  Enable EPT                               default"),
     "secondary processor-based controls: Enable EPT: 'default' is only printed for controls with a TRUE MSR"),
    (lambda t: t + "VM Functions\n  Hex: 0x0\n", "section 'VM Functions' appears twice"),
])
def test_parse_errors(mutate: Any, message: str) -> None:
    with pytest.raises(InputError) as ei:
        vmxcap.parse(mutate(SKY_TEXT), file="in.txt")
    assert message in str(ei.value)
    assert str(ei.value).startswith("in.txt:")
    assert "\n" not in str(ei.value)


def test_looks_like_vmxcap() -> None:
    assert vmxcap.looks_like_vmxcap(SKY_TEXT)
    assert not vmxcap.looks_like_vmxcap("0x481 0x7f00000016\n")
    assert not vmxcap.looks_like_vmxcap("")


def test_old_vmxcap_without_newer_sections() -> None:
    """Older vmxcap (no tertiary section, fewer labels) still parses."""
    lines = SKY_TEXT.splitlines()
    i = lines.index("tertiary processor-based controls")
    old = "\n".join(lines[:i] + lines[i + 2:]) + "\n"
    got = vmxcap.parse(old)
    assert "IA32_VMX_PROCBASED_CTLS3" not in got
    assert got["IA32_VMX_PINBASED_CTLS"] == sky().msrs["IA32_VMX_PINBASED_CTLS"]


def test_every_sample_profiles_render() -> None:
    for p in load_profiles([bundled_profile_dir()]):
        assert vmxcap.render_profile(p).startswith("Basic VMX Information\n  Hex: 0x")


# --------------------------------------------------------------------------- vmxcap's decision rules, per line

_CTL_SECTIONS = {  # section title -> (non-TRUE MSR, TRUE MSR or None), as scripts/kvm/vmxcap reads them
    "pin-based controls": ("IA32_VMX_PINBASED_CTLS", "IA32_VMX_TRUE_PINBASED_CTLS"),
    "primary processor-based controls": ("IA32_VMX_PROCBASED_CTLS", "IA32_VMX_TRUE_PROCBASED_CTLS"),
    "secondary processor-based controls": ("IA32_VMX_PROCBASED_CTLS2", None),
    "VM-Exit controls": ("IA32_VMX_EXIT_CTLS", "IA32_VMX_TRUE_EXIT_CTLS"),
    "VM-Entry controls": ("IA32_VMX_ENTRY_CTLS", "IA32_VMX_TRUE_ENTRY_CTLS"),
}


def _expected_word(bit: int, value: int, true_value: int | None) -> str:
    """qemu.md §6, stated independently: 'default' = forced in the non-TRUE MSR but optional in the TRUE one;
    'no' = may not be 1; 'forced' = must be 1; 'yes' = may be 0 or 1; '?' = must be 1 yet may not be 1."""
    must1, may1 = bool(value >> bit & 1), bool(value >> (bit + 32) & 1)
    if true_value is not None and not true_value >> bit & 1 and true_value >> (bit + 32) & 1 and may1 and must1:
        return "default"
    if not must1:
        return "yes" if may1 else "no"
    return "forced" if may1 else "?"


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted({m for pair in _CTL_SECTIONS.values() for m in pair if m}
                                               | {"IA32_VMX_BASIC", "IA32_VMX_MISC", "IA32_VMX_VMFUNC",
                                                  "IA32_VMX_EPT_VPID_CAP", "IA32_VMX_PROCBASED_CTLS3"})), u64))
def test_every_line_follows_vmxcap_rules(msrs: dict[str, int]) -> None:
    lines = vmxcap.render(msrs).splitlines()
    titles = [line for line in lines if not line.startswith(" ")]
    assert titles == ["Basic VMX Information", "pin-based controls", "primary processor-based controls",
                      "secondary processor-based controls", "tertiary processor-based controls", "VM-Exit controls",
                      "VM-Entry controls", "Miscellaneous data", "VPID and EPT capabilities", "VM Functions"]
    section = ""
    for i, line in enumerate(lines):
        if not line.startswith(" "):
            section = line
            info = section in ("Basic VMX Information", "Miscellaneous data", "VPID and EPT capabilities",
                               "VM Functions")
            msr = {"Basic VMX Information": "IA32_VMX_BASIC", "Miscellaneous data": "IA32_VMX_MISC",
                   "VPID and EPT capabilities": "IA32_VMX_EPT_VPID_CAP", "VM Functions": "IA32_VMX_VMFUNC"}.get(section)
            if info:  # Misc class: the Hex: line comes first, absent MSRs read as 0
                assert lines[i + 1] == f"  Hex: 0x{msrs.get(msr or '', 0):x}"
            continue
        if section in _CTL_SECTIONS:
            label, word = line[2:42].rstrip(), line[43:]
            feat = next(f for f in REG.features.values() if f.vmxcap == label and f.word == REG.msrs[
                _CTL_SECTIONS[section][0]].word)
            non_true, true = _CTL_SECTIONS[section]
            expected = _expected_word(feat.bit, msrs.get(non_true, 0), msrs.get(true, 0) if true else None)
            assert word == expected, (section, label)
        elif section == "tertiary processor-based controls":  # 64-bit allowed-1 bitmap: yes/no only
            assert line.endswith(" yes" if msrs.get("IA32_VMX_PROCBASED_CTLS3", 0) >> 4 & 1 else " no")
