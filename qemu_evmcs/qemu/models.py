"""CPU models: QEMU's named models (a snapshot taken from the real binary) and our eVMCS-ready definitions.

Two kinds of data, kept apart the way libvirt's ``cpu_map`` keeps them:

- **QEMU snapshot** -- ``cpu_models/qemu/<ver>/<Model>.json`` plus ``index.json``,
  written by ``scripts/sync-qemu-models`` from ``query-cpu-definitions`` and a
  static ``query-cpu-model-expansion`` with ``vmx=on``. It records what each
  named model (every version and alias) turns on, including its default vmx-*
  features. Nothing here runs QEMU: the snapshot is data.
- **Model definitions** -- ``cpu_models/<Name>.yaml``: a QEMU base model plus
  feature NAMES switched ``on``/``off`` (the registry owns the bits), the hv-*
  set, the wanted eVMCS range and ``history`` markers.

Where the files are found (decided here, documented once): everything ships **inside the package**,
once, under ``qemu_evmcs/data/cpu_models/`` -- the source checkout's ``cpu_models/`` is a symbolic link
to that directory, so there is one copy of every file and an installed package (``pip install .``,
not editable) needs neither QEMU nor the source tree:

- ``cpu_models/<Name>.yaml`` -- the model definitions. A name (``Skylake-Server-evmcs``) is looked up
  in ``$QEMU_EVMCS_CPU_MODELS`` first, then in the package; anywhere else pass the file path.
- ``cpu_models/qemu/<ver>/`` -- the QEMU snapshot (``scripts/sync-qemu-models`` writes it there).
  Search order: ``$QEMU_EVMCS_QEMU_MODELS`` (a directory holding ``<ver>/``), then the package.
- ``cpu_models/qemu/model-releases.yaml`` -- the first-release table for models a snapshot lacks.

Feature names in definitions may be this project's canonical names, QEMU
property names (including QEMU's two misspelt ``vmx-invept-*`` names) or
libvirt names. QEMU controls bits through **properties**, so a name is turned
into its QEMU property first; a property that covers two bits
(``vmx-invept-single-context`` = bits 25 and 41 of the EPT/VPID word) switches
both. Sets of vmx features returned by this module use canonical registry names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import read_capped, read_text_capped
from qemu_evmcs.core.parsecache import cached_parse, core_sources, yaml_id
from qemu_evmcs.qemu.features import HV_ALIASES, HV_FEATURES, PLUGIN_PERF_GLOBAL_CTRL, VMX_CPUID_REQUIRES, hv_requires
from qemu_evmcs.core.registry import Feature, Registry, data_path, load_data, registry

if TYPE_CHECKING:
    from typing import Any
    import json
    import yaml
    from qemu_evmcs.core import yamlfast, yamlsafe
else:   # PyYAML: only to read model definitions and model-releases.yaml, not for the snapshot (core/lazy.py)
    yaml = lazy.proxy("yaml")
    json = lazy.proxy("json")   # only for a snapshot file the parse cache lacks (_read_json)
    yamlfast = lazy.proxy("qemu_evmcs.core.yamlfast")
    yamlsafe = lazy.proxy("qemu_evmcs.core.yamlsafe")

#: The snapshot shipped with the package (QEMU major.minor).
DEFAULT_QEMU_VERSION = "7.2"
#: Cap of one QEMU model snapshot JSON file (the largest shipped one is a few KiB).
SNAPSHOT_MAX_BYTES = 16 * 1024 * 1024

SEVERITIES = ("error", "warning")

#: Hyper-V enlightenments QEMU knows (qemu.md §1.6), in QEMU's order.
HV_FLAGS: tuple[str, ...] = (
    *(p for f in HV_FEATURES if f.prop != PLUGIN_PERF_GLOBAL_CTRL
      for p in (f.prop, *(a for a, target in HV_ALIASES.items() if target == f.prop))),
    "hv-passthrough", "hv-no-nonarch-coresharing", "hv-enforce-cpuid",
)

#: Hard hv-* dependencies: QEMU fails with "Hyper-V X requires Hyper-V Y" (kvm_hyperv_properties[], qemu.md §1.4).
HV_REQUIRES: Mapping[str, tuple[str, ...]] = hv_requires()

#: Recommendations from QEMU's hyperv.rst (warnings, not errors).
HV_RECOMMENDS: Mapping[str, tuple[str, ...]] = {
    "hv-emsr-bitmap": ("hv-evmcs",),
    "hv-tlbflush-direct": ("hv-evmcs",),
    "hv-reenlightenment": ("hv-frequencies",),
}

#: vmx-* features that QEMU drops unless a CPUID feature is on (CPU.C feature_dependencies[], qemu.md §2).

#: Words QEMU gates on CPUID ``vmx`` itself.
_VMX_GATED_WORDS = ("pinbased", "procbased", "exit", "entry", "misc", "basic")


def vmx_requires(feat: Feature) -> tuple[str, ...]:
    """What QEMU requires for ``feat`` to stay on: ``vmx`` and/or a gating vmx-* feature (canonical names).

    ``vmx`` gates six words, ``vmx-secondary-ctls`` the secondary word, ``vmx-ept``
    the low half of EPT/VPID and ``vmx-unrestricted-guest``, ``vmx-vpid`` the
    high half, ``vmx-vmfunc`` the VM-function word (qemu.md §2 feature_dependencies).
    """
    out: list[str] = []
    if feat.word in _VMX_GATED_WORDS:
        out.append("vmx")
    elif feat.word == "secondary":
        out.append("vmx-secondary-ctls")
    elif feat.word == "ept_vpid":
        out.append("vmx-ept" if feat.bit < 32 else "vmx-vpid")
    elif feat.word == "vmfunc":
        out.append("vmx-vmfunc")
    if feat.name == "vmx-unrestricted-guest":
        out.append("vmx-ept")
    cpuid = VMX_CPUID_REQUIRES.get(feat.name)
    if cpuid:
        out.append(cpuid)
    return tuple(out)


# =========================================================================== QEMU snapshot

@dataclass(frozen=True)
class QemuModel:
    """One QEMU CPU model (or version, or alias) as the snapshot recorded it."""

    name: str
    alias_of: str | None
    deprecated: bool
    migration_safe: bool | None
    static: bool
    typename: str | None
    vendor: str | None
    model_id: str | None
    #: Non-vmx features the static expansion sets (``vmx`` itself only because the snapshot asked for it).
    features: frozenset[str]
    #: QEMU vmx-* property names the expansion sets.
    vmx_props: frozenset[str]
    expansion_error: str | None = None

    @property
    def vmx_features(self) -> frozenset[str]:
        """Canonical registry names of the model's default VMX features (all bits of each property)."""
        return qemu_props_to_features(self.vmx_props)


def qemu_props_to_features(props: Iterable[str], reg: Registry | None = None) -> frozenset[str]:
    """Canonical names of every bit the given QEMU vmx-* properties control (unknown names ignored)."""
    reg = reg or registry()
    out: set[str] = set()
    for prop in props:
        out.update(f.name for f in reg.qemu_bits(prop))
    return frozenset(out)


@dataclass
class QemuSnapshot:
    """A directory ``<ver>/`` written by ``scripts/sync-qemu-models``; model files load lazily."""

    version: str
    directory: str
    qemu_version: str
    all_features: frozenset[str]
    index: Mapping[str, Mapping[str, Any]]
    _cache: dict[str, QemuModel] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        """Is ``name`` a model (or alias) of this QEMU?"""
        return name in self.index

    def names(self) -> list[str]:
        """Every model name, sorted."""
        return sorted(self.index)

    def known(self, features: Iterable[str]) -> frozenset[str]:
        """The CPUID features among ``features`` this QEMU has a property for: what a host profile records
        (the host tools, /proc/cpuinfo and libvirt also name features QEMU does not model)."""
        return frozenset(features) & self.all_features

    def get(self, name: str) -> QemuModel:
        """A model by name.

        :raise InputError: ``unable to find CPU model 'X'`` (QEMU's own words) for an unknown name.
        """
        if name in self._cache:
            return self._cache[name]
        if name not in self.index:
            raise InputError(f"unable to find CPU model '{name}'")
        path = os.path.join(self.directory, str(self.index[name].get("file", f"{name}.json")))
        try:
            raw = _read_json(path)
        except (InputError, ValueError) as err:
            why = err.message if isinstance(err, InputError) else str(err)
            raise InputError(f"cannot read QEMU {self.version} snapshot of {name}: {why}", file=path) from None
        model = QemuModel(
            name=raw["name"], alias_of=raw.get("alias-of"), deprecated=bool(raw.get("deprecated", False)),
            migration_safe=raw.get("migration-safe"), static=bool(raw.get("static", False)),
            typename=raw.get("typename"), vendor=raw.get("vendor"), model_id=raw.get("model-id"),
            features=frozenset(raw.get("features", ())), vmx_props=frozenset(raw.get("vmx-features", ())),
            expansion_error=raw.get("expansion-error"),
        )
        self._cache[name] = model
        return model

    def knows_property(self, name: str) -> bool:
        """Is ``name`` a boolean CPU property of this QEMU (a CPUID/MSR feature or a vmx-* name)?"""
        return name in self.all_features


def package_models_dir() -> str:
    """``qemu_evmcs/data/cpu_models``: the shipped definitions, with the QEMU snapshot under ``qemu/``.

    The one copy of these files; the checkout's ``cpu_models/`` is a symbolic link to it.
    """
    return data_path("cpu_models")


def qemu_models_dirs() -> list[str]:
    """Directories searched for ``<ver>/index.json``, in order."""
    dirs = []
    env = os.environ.get("QEMU_EVMCS_QEMU_MODELS")
    if env:
        dirs.append(env)
    dirs.append(os.path.join(package_models_dir(), "qemu"))
    return dirs


def _read_json(path: str) -> Any:
    """A JSON file of a QEMU snapshot, through the per-user parse cache.

    Why: validate, negotiate and baseline read the snapshot's index and a few model files at every start, and
    ``json`` (with the regular expressions it compiles) cost about 9 million instructions to import for that;
    a cache hit needs no json. A file that is not plain UTF-8 (json also reads UTF-16 and -32, and a BOM) is
    parsed as it always was, uncached.

    :raise InputError: unreadable, not a regular file, or over the snapshot cap.
    :raise ValueError: not JSON (json's own error).
    """
    data = read_capped(path, SNAPSHOT_MAX_BYTES)
    if data.startswith(b"\xef\xbb\xbf"):
        return json.loads(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return json.loads(data)
    return cached_parse(text, _parse_json, parser="qemu-json", parser_files=(__file__,), yaml_version="")


def _parse_json(text: str) -> Any:
    return json.loads(text)


def load_snapshot_dir(directory: str) -> QemuSnapshot:
    """A snapshot from an explicit ``<ver>/`` directory.

    :raise InputError: no readable ``index.json`` there.
    """
    path = os.path.join(directory, "index.json")
    try:
        idx = _read_json(path)
    except (InputError, ValueError) as err:
        why = err.message if isinstance(err, InputError) else str(err)
        raise InputError(f"no QEMU model snapshot: {why}", file=path) from None
    full = str(idx["qemu"]["version"])
    return QemuSnapshot(
        version=".".join(full.split(".")[:2]), directory=directory, qemu_version=full,
        all_features=frozenset(idx["all-features"]), index=idx["models"],
    )


@functools.lru_cache(maxsize=8)
def load_snapshot(version: str = DEFAULT_QEMU_VERSION) -> QemuSnapshot:
    """The snapshot of QEMU ``version`` (major.minor), found by :func:`qemu_models_dirs`.

    :raise InputError: no snapshot for that version anywhere.
    """
    for base in qemu_models_dirs():
        directory = os.path.join(base, version)
        if os.path.isfile(os.path.join(directory, "index.json")):
            return load_snapshot_dir(directory)
    raise InputError(f"no QEMU {version} model snapshot (searched {', '.join(qemu_models_dirs())}); "
                     f"generate one with scripts/sync-qemu-models")


def load_model_features(name: str, snapshot: QemuSnapshot | None = None) -> frozenset[str]:
    """The vmx features (canonical registry names) QEMU model ``name`` enables with ``vmx=on``.

    This is the plug-in the simulated QEMU uses for ``-cpu NAME,vmx=on``.

    :raise InputError: ``unable to find CPU model 'NAME'`` for a model the snapshot lacks.
    """
    snap = snapshot or load_snapshot()
    return snap.get(name).vmx_features


@functools.lru_cache(maxsize=1)
def model_releases() -> Mapping[str, Mapping[str, Any]]:
    """``model-releases.yaml``: first QEMU release of models absent from the snapshot."""
    data = load_data(os.path.join("cpu_models", "qemu", "model-releases.yaml")) or {}   # via the parse cache
    return dict(data.get("models") or {})


def model_release(name: str) -> tuple[str, bool] | None:
    """``(first QEMU release, verified)`` for a model name, or ``None`` if unknown."""
    entry = model_releases().get(name)
    if entry is None:
        return None
    return str(entry["qemu"]), bool(entry.get("verified", False))


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def missing_base_message(name: str, snap: QemuSnapshot) -> str:
    """Why a base model is not in the snapshot: "needs QEMU >= X" when the release table knows it."""
    rel = model_release(name)
    if rel is not None and _version_key(rel[0]) > _version_key(snap.version):
        note = "" if rel[1] else " (release number from memory, unverified: model-releases.yaml)"
        return f"base model {name} needs QEMU >= {rel[0]} (snapshot is {snap.version}){note}"
    return f"base model {name}: unable to find CPU model '{name}' in the QEMU {snap.version} snapshot"


# =========================================================================== model definitions

@dataclass(frozen=True)
class Finding:
    """One validation finding, located in a file.

    :param severity: ``error`` or ``warning``.
    :param code: a short stable identifier (``unknown-feature``, ``evmcs-never-visible``, ...).
    """

    severity: str
    code: str
    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def location(self) -> str:
        """``file:line`` (what is known)."""
        loc = self.file or "<input>"
        return f"{loc}:{self.line}" if self.line is not None else loc

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {"severity": self.severity, "code": self.code, "message": self.message, "file": self.file,
                "line": self.line, "key": self.key}


KeyPath = tuple[str, ...]


#: What ``pv-perf-global-ctrl`` means for the guest's CPUID 0x4000000A.EBX bit 0. QEMU (every release
#: checked, qemu.md §1.3) never sets the bit, so ``auto`` -- "set it if the VMM can" -- is clear under QEMU;
#: ``on`` models a VMM that does set it (honoured by 6.1+ kernels only).
PV_PERF_SETS_BIT = {"on": True, "auto": False, "off": False}


@dataclass(frozen=True)
class ModelDef:
    """One eVMCS-ready model definition (``cpu_models/<Name>.yaml``, see :func:`model_dirs`), structurally valid.

    ``features`` and ``hyperv`` keep the names as written (in file order), values as bools.
    """

    name: str
    description: str
    base: str
    vendor: str
    features: Mapping[str, bool]
    hyperv: Mapping[str, bool]
    evmcs_version: tuple[int, int] | None
    pv_perf_global_ctrl: str
    added: Mapping[str, str]
    removed: Mapping[str, str]
    source: str | None = None
    lines: Mapping[KeyPath, int] = field(default_factory=dict, compare=False)
    duplicates: tuple[tuple[KeyPath, int, int], ...] = field(default=(), compare=False)

    def line_of(self, *path: str) -> int | None:
        """1-based line of a key path, or of its closest known parent."""
        p: KeyPath = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return None

    @property
    def evmcs(self) -> bool:
        """Does the model ask for eVMCS (``hv-evmcs`` on)?"""
        return bool(self.hyperv.get("hv-evmcs", False))


_TOP_KEYS = {"name": str, "description": str, "base": str, "vendor": str, "features": dict, "hyperv": dict,
             "evmcs": dict, "history": dict}
_REQUIRED = ("name", "base", "vendor", "features")
PV_PERF_VALUES = ("auto", "on", "off")


def compose_yaml(text: str, path: str) -> tuple[object, dict[KeyPath, int], list[tuple[KeyPath, int, int]]]:
    """Safe-load one YAML document with a key->line map (and the duplicate keys).

    A pure function of the text, so it goes through the per-user parse cache
    (:mod:`~qemu_evmcs.core.parsecache`): ``validate`` reads every installed definition at every run.

    :raise InputError: malformed YAML (with the line) or more than one document.
    """
    parsed: tuple[object, dict[KeyPath, int], list[tuple[KeyPath, int, int]]] = cached_parse(
        text, functools.partial(_compose_yaml, path=path), parser="model-definition",
        parser_files=_COMPOSE_FILES, yaml_version=yaml_id())
    return parsed


#: The code behind :func:`compose_yaml`'s answer (a change in any of them is a new parse-cache key).
_COMPOSE_FILES = (__file__, *core_sources("yamlfast.py", "yamlsafe.py"))


def _compose_yaml(text: str, path: str) -> tuple[object, dict[KeyPath, int], list[tuple[KeyPath, int, int]]]:
    try:
        try:
            fast_loader = yamlfast.CComposeSafeLoader
            nodes = [n for n in yaml.compose_all(text, Loader=fast_loader) if n is not None]
        except (yaml.YAMLError, RecursionError):
            # Report what the pure-Python loader says (libyaml's messages differ), and accept what only it
            # accepts: the fast composer is an optimisation, never a change of answer.
            nodes = [n for n in yaml.compose_all(text, Loader=yaml.SafeLoader) if n is not None]
    except yaml.YAMLError as err:
        raise yamlsafe.yaml_error(err, path) from None
    except RecursionError:
        raise InputError("YAML nesting too deep", file=path) from None
    if len(nodes) != 1:
        raise InputError(f"expected one YAML document, found {len(nodes)}", file=path, line=1)
    lines: dict[KeyPath, int] = {}
    dups: list[tuple[KeyPath, int, int]] = []      # (key path, first line, repeated line): SafeLoader keeps the last
    for keys, line in yamlsafe.key_lines(nodes[0]):
        if keys in lines:
            dups.append((keys, lines[keys], line))
        lines[keys] = line
    loader = yamlsafe.BoundedSafeLoader("")
    try:
        data = loader.construct_document(nodes[0])
    except yaml.YAMLError as err:
        raise yamlsafe.yaml_error(err, path) from None
    finally:
        loader.dispose()
    return data, lines, dups


def _onoff(value: object) -> bool | None:
    """YAML 1.1 ``on``/``off`` are booleans under the safe loader; quoted "on"/"off" are accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return value.lower() == "on"
    return None


def parse_model_data(data: object, lines: Mapping[KeyPath, int], path: str | None,
                     dups: Iterable[tuple[KeyPath, int, int]] = ()) -> tuple[ModelDef | None, list[Finding]]:
    """Structural validation of one definition; returns the model (``None`` if unusable) and findings."""
    findings: list[Finding] = []

    def err(code: str, msg: str, *key: str) -> None:
        line = None
        p: KeyPath = tuple(key)
        while p and line is None:
            line = lines.get(p)
            p = p[:-1]
        findings.append(Finding("error", code, msg, path, line if key else 1, ".".join(key) or None))

    if not isinstance(data, dict):
        err("not-a-mapping", f"a model definition must be a mapping, got {type(data).__name__}")
        return None, findings
    for key in data:
        if key not in _TOP_KEYS:
            err("unknown-key", f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})", str(key))
    for key in _REQUIRED:
        if key not in data:
            err("missing-key", f"missing required key {key!r}")
    ok = True
    for key, typ in _TOP_KEYS.items():
        if key in data and data[key] is not None and not isinstance(data[key], typ):
            err("bad-type", f"{key} must be a {'mapping' if typ is dict else 'string'}, got {type(data[key]).__name__}",
                key)
            ok = False
    if any(f.code in ("missing-key",) for f in findings) or not ok:
        return None, findings

    def onoff_map(section: str) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for k, v in (data.get(section) or {}).items():
            b = _onoff(v)
            if b is None:
                err("bad-value", f"{section}.{k} must be on or off, got {v!r}", section, str(k))
                continue
            out[str(k)] = b
        return out

    features = onoff_map("features")
    hyperv = onoff_map("hyperv")
    evmcs_version: tuple[int, int] | None = None
    pv = "auto"
    ev = data.get("evmcs") or {}
    for k in ev:
        if k not in ("version", "pv-perf-global-ctrl"):
            err("unknown-key", f"unknown key evmcs.{k} (known: pv-perf-global-ctrl, version)", "evmcs", str(k))
    if "version" in ev:
        v = ev["version"]
        if (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                and 1 <= v[0] <= v[1] <= 255):
            evmcs_version = (v[0], v[1])
        else:
            err("bad-value", f"evmcs.version must be [min, max] with 1 <= min <= max <= 255, got {v!r}",
                "evmcs", "version")
    if "pv-perf-global-ctrl" in ev:
        raw = ev["pv-perf-global-ctrl"]
        b = _onoff(raw)
        pv = ("on" if b else "off") if b is not None else str(raw)
        if pv not in PV_PERF_VALUES:
            err("bad-value", f"evmcs.pv-perf-global-ctrl must be auto, on or off, got {raw!r}",
                "evmcs", "pv-perf-global-ctrl")
            pv = "auto"
    hist = data.get("history") or {}
    added: dict[str, str] = {}
    removed: dict[str, str] = {}
    for k, v in hist.items():
        if k not in ("added", "removed"):
            err("unknown-key", f"unknown key history.{k} (known: added, removed)", "history", str(k))
            continue
        if v is None:
            continue
        if not isinstance(v, dict):
            err("bad-type", f"history.{k} must map feature names to a reason/version", "history", str(k))
            continue
        target = added if k == "added" else removed
        for fk, fv in v.items():
            if not isinstance(fv, (str, int, float)) or isinstance(fv, bool):
                err("bad-value", f"history.{k}.{fk} must be a reason or version string", "history", str(k), str(fk))
            target[str(fk)] = str(fv)
    for p, first, second in dups:
        findings.append(Finding("error", "duplicate-key",
                                f"{'.'.join(p)} is given twice (lines {first} and {second}); YAML keeps only the "
                                f"last value", path, second, ".".join(p)))
    model = ModelDef(
        name=str(data["name"]), description=str(data.get("description") or ""), base=str(data["base"]),
        vendor=str(data["vendor"]), features=features, hyperv=hyperv, evmcs_version=evmcs_version,
        pv_perf_global_ctrl=pv, added=added, removed=removed, source=path, lines=dict(lines),
        duplicates=tuple(dups),
    )
    return model, findings


def read_text(path: str) -> str:
    """A definition file's text.

    :raise InputError: missing, unreadable or not UTF-8 (validate exits 2 for these).
    """
    return read_text_capped(path, what="CPU model definitions")


def model_dirs() -> list[str]:
    """Directories searched for ``<Name>.yaml`` definitions, in order."""
    dirs = []
    env = os.environ.get("QEMU_EVMCS_CPU_MODELS")
    if env:
        dirs.append(env)
    dirs.append(package_models_dir())
    return dirs


def model_files() -> list[str]:
    """Every ``*.yaml`` definition of the first existing :func:`model_dirs` entry, sorted."""
    for d in model_dirs():
        if os.path.isdir(d):
            return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith((".yaml", ".yml"))]
    return []


def resolve_model_path(name_or_path: str) -> str:
    """A definition file for a path or a model name (``Skylake-Server-evmcs``).

    :raise InputError: neither a file nor a known definition name.
    """
    if os.path.isfile(name_or_path):
        return name_or_path
    for d in model_dirs():
        for ext in (".yaml", ".yml"):
            candidate = os.path.join(d, name_or_path + ext)
            if os.path.isfile(candidate):
                return candidate
    # A definition whose `name:` differs from its file name.
    for path in model_files():
        try:
            data, _, _ = compose_yaml(read_text(path), path)
        except InputError:
            continue
        if isinstance(data, dict) and data.get("name") == name_or_path:
            return path
    names = [os.path.splitext(os.path.basename(p))[0] for p in model_files()]
    known = ", ".join(names) or "none"
    if os.sep in name_or_path or name_or_path.endswith((".yaml", ".yml")):
        stem = os.path.splitext(os.path.basename(name_or_path))[0]
        hint = (f"; an installed definition has that name: --model {stem}" if stem in names
                else f" (installed definitions: {known})")
        raise InputError(f"No such file or directory{hint}", file=name_or_path)
    close = lazy.module("difflib").get_close_matches(name_or_path.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    mean = next((f"did you mean {n}? " for n in names if close and n.lower() == close[0]), "")
    raise InputError(f"unknown model definition {name_or_path!r} ({mean}known: {known})")


def load_model(name_or_path: str) -> ModelDef:
    """Load one definition by name or path, failing loudly on the first structural error.

    Semantic checks (feature names, dependencies, eVMCS conflicts) are
    :func:`qemu_evmcs.policy.validate.validate_model`'s job; :func:`effective_model`
    raises for the ones that make the feature set undefined.

    :raise InputError: unreadable file, malformed YAML, or a structural error (with file:line).
    """
    path = resolve_model_path(name_or_path)
    data, lines, dups = compose_yaml(read_text(path), path)
    model, findings = parse_model_data(data, lines, path, dups)
    for f in findings:
        if f.severity == "error":
            raise InputError(f.message, file=path, line=f.line, key=f.key)
    assert model is not None
    return model


# =========================================================================== effective feature sets

@dataclass(frozen=True)
class Resolved:
    """A definition's feature name resolved to what QEMU would set."""

    written: str
    kind: str                      # "vmx" | "cpuid" | "unknown" | "no-qemu-property"
    qemu_prop: str | None       # the QEMU property (vmx or cpuid)
    bits: tuple[str, ...]          # canonical vmx features the property controls


def resolve_feature_name(name: str, snap: QemuSnapshot, reg: Registry | None = None) -> Resolved:
    """Turn a name written in a definition into the QEMU property and the vmx bits it controls."""
    reg = reg or registry()
    typo_bits = reg.qemu_bits(name)
    if typo_bits:  # a QEMU property name, including the misspelt duplicates
        return Resolved(name, "vmx", name, tuple(f.name for f in typo_bits))
    feat = reg.get(name)
    if feat is not None:
        if feat.qemu is None:
            return Resolved(name, "no-qemu-property", None, (feat.name,))
        return Resolved(name, "vmx", feat.qemu, tuple(f.name for f in reg.qemu_bits(feat.qemu)))
    if snap.knows_property(name) and not name.startswith("vmx-"):
        return Resolved(name, "cpuid", name, ())
    return Resolved(name, "unknown", None, ())


@dataclass(frozen=True)
class EffectiveModel:
    """What ``-cpu <base>,<features>`` gives a guest before any host filtering.

    :param vmx: canonical vmx features on after QEMU's dependency pass.
    :param cpuid: CPUID/MSR features on (``vmx`` among them when switched on).
    :param base_vmx: the base model's default vmx features (with ``vmx=on``).
    :param dropped_by_model: base vmx features the definition (or history.removed) switches off.
    :param dropped_by_deps: features QEMU drops because a feature they depend on is off.
    """

    model: ModelDef
    base: QemuModel
    vmx: frozenset[str]
    cpuid: frozenset[str]
    base_vmx: frozenset[str]
    dropped_by_model: frozenset[str]
    dropped_by_deps: frozenset[str]


def effective_model(model: ModelDef, snap: QemuSnapshot | None = None) -> EffectiveModel:
    """Apply the definition to its base model the way QEMU would.

    Order: base defaults (with ``vmx`` only if the definition switches it on),
    then ``history.removed`` (implied off), then ``features`` in file order,
    then QEMU's dependency pass (a feature whose gate is off is dropped).

    :raise InputError: base model not in the snapshot (with "needs QEMU >= X" when known).
    """
    snap = snap or load_snapshot()
    reg = registry()
    if not snap.has(model.base):
        raise InputError(missing_base_message(model.base, snap), file=model.source, line=model.line_of("base"),
                         key="base")
    base = snap.get(model.base)
    cpuid: set[str] = set(base.features) - {"vmx"}
    base_vmx = base.vmx_features
    vmx: set[str] = set(base_vmx)
    settings: list[tuple[str, bool]] = [(n, False) for n in model.removed] + list(model.features.items())
    for name, on in settings:
        r = resolve_feature_name(name, snap, reg)
        if r.kind == "cpuid":
            (cpuid.add if on else cpuid.discard)(name)
        elif r.kind in ("vmx", "no-qemu-property"):
            for b in r.bits:
                (vmx.add if on else vmx.discard)(b)
    dropped_by_model = frozenset(base_vmx - vmx)
    # QEMU's dependency pass, to a fixed point (a dropped gate drops its dependents).
    dropped: set[str] = set()
    if "vmx" not in cpuid:
        dropped |= vmx
        vmx = set()
    changed = True
    while changed:
        changed = False
        for name in sorted(vmx):
            reqs = vmx_requires(reg.features[name])
            if any(r not in vmx and r not in cpuid for r in reqs):
                vmx.discard(name)
                dropped.add(name)
                changed = True
    return EffectiveModel(model=model, base=base, vmx=frozenset(vmx), cpuid=frozenset(cpuid), base_vmx=base_vmx,
                          dropped_by_model=dropped_by_model, dropped_by_deps=frozenset(dropped - dropped_by_model))
