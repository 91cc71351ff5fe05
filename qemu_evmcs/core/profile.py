"""Host profiles: one YAML document describing one KVM host.

A profile records what KVM reports on that host (the VMX capability MSRs
returned by ``KVM_GET_MSRS`` on the system fd), the kernel release (which
decides the eVMCS era), and a few facts (vendor, ``nested``, CONFIG_KVM_HYPERV).
Optionally ``cpu_msrs`` holds the raw hardware values (rdmsr), which lets
``explain`` tell "the CPU lacks it" from "KVM's nested support hides it".

Minimal form (all other keys optional)::

    name: skylake-63
    vendor: GenuineIntel
    kernel: "6.3"
    msrs:
      IA32_VMX_BASIC: 0xda040000000004

Defaults: ``nested: true``; ``kvm_hyperv: true`` (CONFIG_KVM_HYPERV=y; the
option exists from 6.8); ``synthetic: false``; ``cpu_msrs``: absent.

Validation errors are :class:`~qemu_evmcs.core.errors.InputError` naming the file,
the key and, when known, the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Iterator, Mapping, Sequence

from qemu_evmcs.core.cpuid import NAME as CPUID_NAME, parse_leaf
from qemu_evmcs.core.digest import canonical_json, sha256_hex
from qemu_evmcs.core.enumeration import TRUE_MSRS, quirks
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import MAX_INPUT_BYTES, read_text_capped
from qemu_evmcs.core.kernel import Era, KernelVersion, parse_release
from qemu_evmcs.core.kernelid import AmbiguousKernel, KernelIdentity, identify
from qemu_evmcs.core import lazy
from qemu_evmcs.core.parsecache import cached_parse, core_sources, yaml_id
from qemu_evmcs.core.profilewalk import profile_files
from qemu_evmcs.core.registry import MASK32, MASK64, Registry, registry

if TYPE_CHECKING:
    from typing import Any


VENDORS = ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")

_OPTIONAL_KEYS: dict[str, Any] = {
    "family": int, "model": int, "stepping": int, "model_name": str, "nested": bool, "kvm_hyperv": bool,
    "notes": str, "provenance": str, "synthetic": bool, "cpu_msrs": dict, "unknown_msrs": list,
    "cpu_features": list, "cpuid": list,
    "kernel_version": (str, float),
}
_REQUIRED_KEYS = {"name": str, "vendor": str, "kernel": (str, int, float), "msrs": dict}

#: Upper bound on a profile file, so hostile input cannot exhaust memory.
MAX_PROFILE_BYTES = MAX_INPUT_BYTES

@dataclass(frozen=True)
class HostProfile:
    """One KVM host, validated."""

    name: str
    vendor: str
    kernel: str
    version: KernelVersion
    msrs: Mapping[str, int]
    nested: bool = True
    kvm_hyperv: bool = True
    cpu_msrs: Mapping[str, int] | None = None
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    model_name: str | None = None
    notes: str | None = None
    provenance: str | None = None
    synthetic: bool = False
    #: MSRs the CPU enumerates that the input lacked (``host import --partial``): answers depending on them are
    #: conservative (the features in them count as absent) and say so.
    unknown_msrs: tuple[str, ...] = ()
    #: CPUID features QEMU can give a guest here, in QEMU's names (``host probe``, ``host import --cpuinfo`` or
    #: libvirt XML); ``None``: not recorded, so base-model CPUID checks cannot look at this host.
    cpu_features: frozenset[str] | None = None
    #: Raw CPUID leaves the ``cpu_features`` were decoded from (``LEAF[.SUB]: EAX-EBX-ECX-EDX``, verbatim from a
    #: public dump; the bundled real-CPU profiles carry them as provenance). Answers use ``cpu_features`` only.
    cpuid: tuple[str, ...] | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)
    #: Accepted oddities of the input (raw-hardware quirks in ``cpu_msrs``), one line each, for the CLI to print.
    warnings: tuple[str, ...] = field(default=(), compare=False)
    #: The upstream point release a distribution build is based on (``/proc/version``: "Debian 5.10.197-1").
    kernel_version: str | None = None

    @property
    def identity(self) -> KernelIdentity:
        """What ``kernel`` (+ ``kernel_version``) says about the KVM code: one era or the candidate eras."""
        return identify(self.kernel, self.kernel_version, file=self.source)

    @property
    def era(self) -> Era:
        """The eVMCS era of this host's kernel.

        :raise AmbiguousKernel: no source tells which era the build is in (exit 2, naming every candidate);
            callers that can compute against every candidate use :meth:`candidate_profiles` instead.
        """
        ident = self.identity
        if ident.ambiguous and self.is_intel:
            raise AmbiguousKernel(ident, file=self.source or self.name, host=self.name)
        # A non-Intel host has no eVMCS whatever its era: the first candidate stands for all of them.
        return ident.candidates[0].era

    @property
    def era_label(self) -> str:
        """The era id, or ``"5.15-5.16|5.17-6.0"`` for a build whose era is ambiguous (for listings)."""
        return "|".join(self.identity.era_ids())

    def candidate_profiles(self) -> list[HostProfile]:
        """This host once per era its kernel may be in (itself if the era is known), each pinned by
        ``kernel_version`` to a representative upstream release and named ``"host (if era X)"``."""
        ident = self.identity
        if not ident.ambiguous or not self.is_intel:
            return [self]
        return [HostProfile(**{**self.__dict__, "name": f"{self.name} (if era {c.era.id})",
                               "kernel_version": str(c.version), "version": c.version})
                for c in ident.candidates]

    @property
    def is_intel(self) -> bool:
        """Only Intel VMX has eVMCS."""
        return self.vendor == "GenuineIntel"

    def unknown_note(self) -> str | None:
        """The sentence every answer about this host carries when its profile is partial (else ``None``)."""
        if not self.unknown_msrs:
            return None
        return (f"host {self.name}: {', '.join(self.unknown_msrs)} unknown (partial import): the features they "
                f"carry count as absent there, so this answer may be more conservative than the host needs")

    def with_kernel(self, kernel: str) -> HostProfile:
        """The same host booted with another kernel (``--kernel``): an upstream release (``5.10.101``) or a
        distribution build (``5.10.0-26-amd64``); the profile's ``kernel_version`` does not carry over."""
        ident = identify(kernel, key="--kernel")
        v = ident.version if not ident.ambiguous else parse_release(kernel, key="--kernel")
        return HostProfile(**{**self.__dict__, "kernel": kernel, "version": v, "kernel_version": None})

    def with_nested(self, nested: bool) -> HostProfile:
        """The same host with ``kvm_intel.nested`` set as given (KVM then reports no VMX MSRs if off)."""
        return HostProfile(**{**self.__dict__, "nested": nested})

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (for YAML/JSON output); MSR values as ``0x`` + 16 hex digits."""
        reg = registry()
        out: dict[str, Any] = {"name": self.name, "vendor": self.vendor, "kernel": self.kernel}
        if self.kernel_version is not None:
            out["kernel_version"] = self.kernel_version
        for key in ("family", "model", "stepping", "model_name"):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        out["nested"] = self.nested
        out["kvm_hyperv"] = self.kvm_hyperv
        if self.synthetic:
            out["synthetic"] = True
        out["msrs"] = {n: f"0x{self.msrs[n]:016x}" for n in reg.msr_names() if n in self.msrs}
        if self.cpu_msrs is not None:
            out["cpu_msrs"] = {n: f"0x{self.cpu_msrs[n]:016x}" for n in reg.msr_names() if n in self.cpu_msrs}
        if self.unknown_msrs:
            out["unknown_msrs"] = list(self.unknown_msrs)
        if self.cpu_features is not None:
            out["cpu_features"] = sorted(self.cpu_features)
        if self.cpuid is not None:
            out["cpuid"] = list(self.cpuid)
        for key in ("notes", "provenance"):
            val = getattr(self, key)
            if val is not None:
                out[key] = val
        return out

    def fingerprint(self) -> str:
        """Content hash of everything that affects eVMCS results (not the name, notes or source).

        Fleets have many identical hosts; results are computed once per fingerprint.
        """
        key = {
            "vendor": self.vendor, "era_kernel": [self.version.major, self.version.minor],
            "nested": self.nested, "kvm_hyperv": self.kvm_hyperv,
            "msrs": sorted(self.msrs.items()),
            "cpu_msrs": sorted(self.cpu_msrs.items()) if self.cpu_msrs is not None else None,
        }
        ident = self.identity
        if ident.ambiguous:
            key["candidate_eras"] = ident.era_ids()
        elif ident.candidates[0].era.backports:
            era = ident.candidates[0].era
            # The series decides the kernel facts (version_at_least); a stable point release with backports has
            # its own filter on top. Added only then, so mainline-era fingerprints stay what they were.
            key["stable_era"] = era.id
        if self.unknown_msrs:
            key["unknown_msrs"] = sorted(self.unknown_msrs)
        if self.cpu_features is not None:
            key["cpu_features"] = sorted(self.cpu_features)
        return sha256_hex(canonical_json(key).encode())[:24]


def _kind(value: object) -> str:
    """The built-in type a YAML value has (the loader's float keeps its text in a subclass: say ``float``)."""
    return next(c.__name__ for c in type(value).__mro__ if c.__module__ == "builtins")


def _type_name(t: Any) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return str(t.__name__)


# --------------------------------------------------------------------------- parsing

def parse_msr_value(raw: object, *, file: str | None, key: str, line: int | None) -> int:
    """An MSR value: a YAML integer or a hex string (``"0x7f00000016"``, ``"7f00000016"``)."""
    if isinstance(raw, bool):
        raise InputError("MSR value must be an integer or hex string, got bool", file=file, key=key, line=line)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        s = raw.strip().replace("_", "").replace("`", "")
        try:
            value = int(s, 16)
        except ValueError:
            raise InputError(f"MSR value {raw!r} is not a hex number", file=file, key=key, line=line) from None
    else:
        raise InputError(f"MSR value must be an integer or hex string, got {type(raw).__name__}",
                         file=file, key=key, line=line)
    if value < 0 or value > MASK64:
        shown = (f"{value:#x}" if value >= 0 else f"-{-value:#x}") if isinstance(raw, int) else repr(raw)
        raise InputError(f"MSR value {shown} does not fit in 64 bits", file=file, key=key, line=line)
    return value


def _parse_msrs(raw: Mapping[Any, Any], section: str, file: str | None, lines: Mapping[str, int],
                reg: Registry, warnings: list[str] | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, val in raw.items():
        key = f"{section}.{name}"
        line = lines.get(key)
        if not isinstance(name, str) or name not in reg.msrs:
            hint = ""
            if isinstance(name, str):
                close = lazy.module("difflib").get_close_matches(name, reg.msr_names(), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(f"unknown MSR name {name!r}{hint}", file=file, key=key, line=line)
        out[name] = parse_msr_value(val, file=file, key=key, line=line)
    tolerated: set[str] = set()
    if section == "cpu_msrs":
        # Raw hardware dumps in public tables show these; KVM never reports them, so `msrs` keeps refusing.
        for msr, what in quirks(out, reg):
            tolerated.add(msr)
            if warnings is not None:
                where = f"{file}: " if file else ""
                warnings.append(f"{where}{section}.{msr}: {what} (raw hardware dump quirk; accepted)")
    else:
        basic = out.get("IA32_VMX_BASIC")
        if basic is not None and not basic & reg.feature("vmx-true-ctls").mask:
            for name in out:
                if name in TRUE_MSRS:
                    key = f"{section}.{name}"
                    raise InputError("present although IA32_VMX_BASIC bit 55 (TRUE controls) is clear; KVM never "
                                     "reports that (a raw hardware dump belongs under cpu_msrs:)",
                                     file=file, key=key, line=lines.get(key), msr=name)
    _check_consistency(out, section, file, lines, reg, skip=tolerated)
    return out


def _check_consistency(msrs: Mapping[str, int], section: str, file: str | None, lines: Mapping[str, int],
                       reg: Registry, skip: set[str] | None = None) -> None:
    """allowed-0 within allowed-1; TRUE and non-TRUE allowed-1 halves equal, and their allowed-0 halves differ
    only in the default1 bits, which the non-TRUE form reports as must-be-1 (SDM A.3)."""
    for name, value in msrs.items():
        m = reg.msrs[name]
        key = f"{section}.{name}"
        if m.layout == "ctl":
            lo, hi = value & MASK32, (value >> 32) & MASK32
            bad = lo & ~hi
            if bad:
                bit = (bad & -bad).bit_length() - 1
                raise InputError(f"allowed-0 bit {bit} is set but allowed-1 bit {bit + 32} is clear "
                                 f"(a control cannot be both required and unsupported)",
                                 file=file, key=key, line=lines.get(key), msr=name, bit=bit)
        if m.true and m.true in msrs and name not in (skip or ()):
            a1, t1 = (value >> 32) & MASK32, (msrs[m.true] >> 32) & MASK32
            if a1 != t1:
                diff = a1 ^ t1
                bit = (diff & -diff).bit_length() - 1
                raise InputError(f"allowed-1 halves of {name} and {m.true} differ (first at control bit {bit}); "
                                 f"the SDM requires them to be equal", file=file, key=key, line=lines.get(key),
                                 msr=name, bit=bit)
            # SDM Vol. 3D A.2/A.3: a TRUE control MSR may report 0 (optional) only for default1-class
            # controls; every other allowed-0 bit is the same in both forms, and the non-TRUE form reports
            # every default1 control as must-be-1. KVM builds the non-TRUE value the same way
            # (vmx_get_vmx_msr: TRUE low | *_ALWAYSON_WITHOUT_TRUE_MSR).
            assert m.word is not None
            always_on = reg.words[m.word].always_on
            lo, tlo = value & MASK32, msrs[m.true] & MASK32
            want = tlo | always_on
            if lo != want:
                diff = lo ^ want
                bit = (diff & -diff).bit_length() - 1
                raise InputError(f"allowed-0 half of {name} ({lo:#010x}) must be that of {m.true} plus the "
                                 f"default1 bits {always_on:#x}, i.e. {want:#010x} (first difference at control "
                                 f"bit {bit}); the SDM lets the TRUE MSR clear only default1 bits",
                                 file=file, key=key, line=lines.get(key), msr=name, bit=bit)


#: Unicode categories refused in host names (and pool names): C0/C1 controls and DEL (``\n``, ANSI escape
#: sequences), format characters (bidirectional overrides, zero-width joiners) and line/paragraph separators.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def control_character(text: str) -> str | None:
    """The first character of ``text`` that would let it forge or hide output lines, or ``None``.

    Why: ``fleet query`` prints one host name a line; ``"a\nforged-host"`` showed as two hosts, and an ANSI
    escape could rewrite the terminal. Such names are refused at import (and when read back from an
    inventory), rather than escaped on each of the many outputs.
    """
    if text.isascii() and text.isprintable():
        return None      # the common case, at C speed: ASCII has no Cf/Zl/Zp and its Cc are not printable
    category = lazy.module("unicodedata").category      # a C extension: loaded only for such text
    for ch in text:
        if category(ch) in _CONTROL_CATEGORIES:
            return ch
    return None


def profile_from_mapping(data: object, *, file: str | None = None,
                         lines: Mapping[str, int] | None = None) -> HostProfile:
    """Validate one YAML document and build a :class:`HostProfile`."""
    lines = lines or {}
    reg = registry()
    if not isinstance(data, dict):
        raise InputError(f"a host profile must be a mapping, got {type(data).__name__}", file=file, line=1)
    for key in data:
        if key not in _REQUIRED_KEYS and key not in _OPTIONAL_KEYS:
            raise InputError(f"unknown key {key!r} (known: {', '.join(sorted({**_REQUIRED_KEYS, **_OPTIONAL_KEYS}))})",
                             file=file, key=str(key), line=lines.get(str(key)))
    for key, typ in _REQUIRED_KEYS.items():
        if key not in data:
            raise InputError("missing required key", file=file, key=key)
        if isinstance(data[key], bool) or not isinstance(data[key], typ):  # type: ignore[arg-type]
            raise InputError(f"must be {_type_name(typ)}, got {_kind(data[key])}",
                             file=file, key=key, line=lines.get(key))
    for key, typ in _OPTIONAL_KEYS.items():
        if key in data and data[key] is not None:
            val = data[key]
            if (typ is not bool and isinstance(val, bool)) or not isinstance(val, typ):
                raise InputError(f"must be {_type_name(typ)}, got {_kind(val)}",
                                 file=file, key=key, line=lines.get(key))
    name = data["name"]
    if not name.strip():
        raise InputError("must not be empty", file=file, key="name", line=lines.get("name"))
    bad = control_character(name)
    if bad is not None:
        raise InputError(f"contains the control character U+{ord(bad):04X}; host names are printed one a line, "
                         "so line breaks, escape sequences and format characters are refused",
                         file=file, key="name", line=lines.get("name"))
    vendor = data["vendor"]
    if vendor not in VENDORS:
        raise InputError(f"unknown vendor {vendor!r} (known: {', '.join(VENDORS)})",
                         file=file, key="vendor", line=lines.get("vendor"))
    kernel = str(getattr(data["kernel"], "raw", data["kernel"]))
    raw_kv = data.get("kernel_version")
    kernel_version = None if raw_kv is None else str(getattr(raw_kv, "raw", raw_kv))
    try:
        parse_release(data["kernel"], file=file, key="kernel")
        ident = identify(kernel, kernel_version, file=file)
    except InputError as err:
        err.line = lines.get(err.key or "kernel")
        raise
    version = ident.version if not ident.ambiguous else parse_release(kernel, file=file)
    msrs = _parse_msrs(data["msrs"], "msrs", file, lines, reg)
    warnings: list[str] = []
    cpu_msrs = None
    if data.get("cpu_msrs") is not None:
        cpu_msrs = _parse_msrs(data["cpu_msrs"], "cpu_msrs", file, lines, reg, warnings)
    unknown: list[str] = []
    for i, u in enumerate(data.get("unknown_msrs") or []):
        if not isinstance(u, str) or u not in reg.msrs:
            raise InputError(f"unknown MSR name {u!r}", file=file, key=f"unknown_msrs[{i}]",
                             line=lines.get("unknown_msrs"))
        if u in msrs:
            raise InputError(f"{u} is listed as unknown but has a value under msrs", file=file,
                             key=f"unknown_msrs[{i}]", line=lines.get("unknown_msrs"))
        unknown.append(u)
    cpu_features = None
    if data.get("cpu_features") is not None:
        feats = set()
        for i, f in enumerate(data["cpu_features"]):
            if not isinstance(f, str) or not CPUID_NAME.match(f):
                raise InputError(f"not a CPUID feature name (QEMU spelling, e.g. sse4.1): {f!r}", file=file,
                                 key=f"cpu_features[{i}]", line=lines.get("cpu_features"))
            feats.add(f)
        cpu_features = frozenset(feats)
    cpuid = None
    if data.get("cpuid") is not None:
        for i, leaf in enumerate(data["cpuid"]):
            if not isinstance(leaf, str) or parse_leaf(leaf) is None:
                raise InputError(f"not a CPUID leaf (LEAF[.SUBLEAF]: EAX-EBX-ECX-EDX in hex): {leaf!r}", file=file,
                                 key=f"cpuid[{i}]", line=lines.get("cpuid"))
        cpuid = tuple(str(leaf) for leaf in data["cpuid"])
    return HostProfile(
        name=name, vendor=vendor, kernel=kernel, version=version, msrs=msrs,
        nested=bool(data.get("nested", True)), kvm_hyperv=bool(data.get("kvm_hyperv", True)),
        cpu_msrs=cpu_msrs, family=data.get("family"), model=data.get("model"), stepping=data.get("stepping"),
        model_name=data.get("model_name"), notes=data.get("notes"), provenance=data.get("provenance"),
        synthetic=bool(data.get("synthetic", False)), source=file, kernel_version=kernel_version,
        unknown_msrs=tuple(n for n in reg.msr_names() if n in unknown), warnings=tuple(warnings),
        cpu_features=cpu_features, cpuid=cpuid,
    )


def _read_text(path: str) -> str:
    """A profile file's text: a regular file of at most :data:`MAX_PROFILE_BYTES` (see ``core.inputfile``)."""
    return read_text_capped(path, MAX_PROFILE_BYTES, what="host profiles")


def load_profile_text(text: str, path: str = "<string>") -> HostProfile:
    """Exactly one profile from YAML text; refused at the start of a second document (a million empty
    documents must not be composed before saying so). The parse goes through the per-user parse cache
    (:mod:`~qemu_evmcs.core.parsecache`); validation runs every time. PyYAML and the YAML half of this module
    (:mod:`~qemu_evmcs.core.profileyaml`) are imported only when the text is not in the cache."""

    def first_two(t: str) -> list[tuple[object, dict[str, int], int]]:
        return _profileyaml().first_documents(t, path, 2)  # type: ignore[no-any-return]

    docs = cached_parse(text, first_two, parser="profile", parser_files=PARSER_FILES, yaml_version=yaml_id())
    if not docs:
        raise InputError("expected one YAML document, found 0", file=path)
    first = docs[0]
    second = docs[1] if len(docs) > 1 else None
    if second is not None:
        raise InputError("expected one YAML document, found more (a second one starts here)", file=path,
                         line=second[2])
    data, lines, _ = first
    return profile_from_mapping(data, file=path, lines=lines)


def iter_documents(text: str, path: str) -> Iterator[tuple[object, dict[str, int]]]:
    """Each YAML document of ``text`` with its key->line map (safe loader only;
    :func:`~qemu_evmcs.core.profileyaml.iter_documents`)."""
    return _profileyaml().iter_documents(text, path)  # type: ignore[no-any-return]


def _profileyaml() -> ModuleType:
    """The YAML half of host-profile reading (PyYAML with it), loaded on first use (:mod:`~qemu_evmcs.core.lazy`)."""
    return lazy.module("qemu_evmcs.core.profileyaml")


#: The code that turns a profile's text into what the parse cache stores: a change in any of them is a new key.
PARSER_FILES = core_sources("profileyaml.py", "yamlsafe.py", "yamlfast.py")


def load_profile(path: str) -> HostProfile:
    """Exactly one profile from a file."""
    return load_profile_text(_read_text(path), path)


def iter_profiles(paths: Sequence[str]) -> Iterator[HostProfile]:
    """Profiles from files (multi-document allowed) and directories (``*.yaml``/``*.yml``, sorted), streamed."""
    for path in paths:
        if os.path.isdir(path):
            yield from iter_profiles(profile_files(path))     # the one walk of a directory (core/profilewalk)
            continue
        text = _read_text(path)
        for data, lines in iter_documents(text, path):
            yield profile_from_mapping(data, file=path, lines=lines)


def load_profiles(paths: Sequence[str]) -> list[HostProfile]:
    """:func:`iter_profiles` as a list."""
    return list(iter_profiles(paths))


def bundled_profile_dir() -> str:
    """Directory of the sample profiles shipped in the package."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "profiles")


def bundled_fleet_dir() -> str:
    """Directory of the bundled real-CPU profiles (public dumps, one file per CPU; ``scripts/make-fleet`` pools).

    Kept apart from the samples so that a command over :func:`bundled_profile_dir` keeps its small, stable set.
    """
    return os.path.join(bundled_profile_dir(), "fleet")


def resolve_profile_path(name_or_path: str) -> str:
    """A path as given, or the name of a bundled profile (``skylake-5.10``, ``ivybridge-5.10`` -> its file)."""
    if os.path.exists(name_or_path):
        return name_or_path
    for where in (bundled_profile_dir(), bundled_fleet_dir()):
        candidate = os.path.join(where, name_or_path + ".yaml")
        if os.path.exists(candidate):
            return candidate
    return name_or_path


def load_host_profile(name_or_path: str) -> HostProfile:
    """The profile a command names with a file or a bundled name (``--host``, ``--simulate``).

    :raise InputError: it cannot be read or is not a valid profile.
    """
    return load_profile(resolve_profile_path(name_or_path))


def bundled_profile_names() -> list[str]:
    """Names of the bundled profiles (samples and real-CPU fleet: ``skylake-6.3``, ``ivybridge-5.10``...), sorted."""
    names: list[str] = []
    for where in (bundled_profile_dir(), bundled_fleet_dir()):
        try:
            names += [n[: -len(".yaml")] for n in os.listdir(where) if n.endswith(".yaml")]
        except OSError:  # pragma: no cover - a broken installation
            pass
    return sorted(names)


def bundled_name_hint(name_or_path: str) -> str:
    """For a missing argument that looks like a bundled profile name rather than a path (no directory
    part, no ``.yaml``/``.yml``/``.db`` suffix): ``"did you mean skylake-6.3?"`` or the list of bundled
    names; ``""`` for path-like arguments."""
    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml", ".db", ".sqlite")):
        return ""
    names = bundled_profile_names()
    close = lazy.module("difflib").get_close_matches(name_or_path.lower(), names, n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else f"bundled profiles: {', '.join(names)}"


def require_profile_path(name_or_path: str) -> str:
    """:func:`resolve_profile_path`, but a missing name-like argument (a typo of a bundled name such as
    ``skylake-63``) fails here with the bundled names; a missing path is left to the reader's error.

    :raise InputError: neither a file nor a bundled profile name, and not path-like (exit 2).
    """
    path = resolve_profile_path(name_or_path)
    if not os.path.exists(path):
        hint = bundled_name_hint(name_or_path)
        if hint:
            raise InputError(f"no such file, and no bundled profile of that name ({hint})", file=name_or_path)
    return path
