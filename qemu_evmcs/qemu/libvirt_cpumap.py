"""libvirt's ``cpu_map``: which CPU model and feature names a libvirt accepts, and how QEMU's map onto them.

Why: libvirt refuses a domain whose ``<cpu>`` names a model or feature its ``cpu_map`` does not know
(libvirt 9.0: ``unknown CPU feature: vmx-preemption-timer``, ``Unknown CPU model Skylake-Server-v5``).
libvirt's model names are QEMU's unversioned names and aliases (``Skylake-Server-noTSX-IBRS``), passed to
QEMU verbatim as ``-cpu NAME,...``; QEMU's versioned models (``Skylake-Server-v5``) have no libvirt name.

Where the names come from (in this order):

- ``$QEMU_EVMCS_LIBVIRT_CPU_MAP`` (a ``cpu_map`` directory) or the installed ``/usr/share/libvirt/cpu_map``,
  read as libvirt reads it (``index.xml`` -> ``<arch name='x86'>`` -> ``<include filename=...>``);
- otherwise, or with ``--libvirt-version X.Y``, a bundled snapshot ``data/libvirt/cpu_map-X.Y.yaml``
  written from a real ``cpu_map`` by ``scripts/sync-libvirt-cpumap``. A version between two snapshots
  uses the older one (libvirt only ever adds names).

vmx-* features: libvirt 9.0's ``cpu_map`` has none (the bundled 9.0 snapshot, read from Debian 12's
libvirt0 9.0.0-4+deb12u2). libvirt 9.10.0 has them (qemu.md §5: libvirt issue #568 names
``vmx-apicv-register`` in 9.10.0's models); the first release between the two is not verified, so only
a snapshot that lists them, or a target of 9.10 or later, uses the registry's libvirt ``vmx-*`` names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.registry import data_path, registry
from qemu_evmcs.qemu.models import QemuSnapshot

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
    import yaml
else:   # read only when a command reads a cpu_map (core/lazy.py): baseline --pool never does
    ET = lazy.proxy("xml.etree.ElementTree")
    yaml = lazy.proxy("yaml")

INSTALLED = "/usr/share/libvirt/cpu_map"
ENV_CPU_MAP = "QEMU_EVMCS_LIBVIRT_CPU_MAP"


@dataclass(frozen=True)
class CpuMap:
    """The x86 part of one libvirt ``cpu_map``.

    :param version: ``X.Y`` of the libvirt it describes, or ``installed``.
    :param source: the directory or bundled file it was read from.
    :param models: x86 CPU model names.
    :param features: x86 feature names (CPUID and MSR features, vmx-* among them when known).
    :param qemu_aliases: QEMU spelling -> libvirt name (``<alias name='...' source='qemu'/>``).
    """

    version: str
    source: str
    models: frozenset[str]
    features: frozenset[str]
    qemu_aliases: Mapping[str, str] = field(default_factory=dict)

    def feature(self, qemu_name: str) -> str | None:
        """libvirt's name for QEMU feature/property ``qemu_name``, or ``None`` if this libvirt has none.

        libvirt writes some features with ``_`` where QEMU writes ``-`` (``lahf_lm``); QEMU accepts either.
        """
        if qemu_name in self.features:
            return qemu_name
        if qemu_name in self.qemu_aliases:
            return self.qemu_aliases[qemu_name]
        under = qemu_name.replace("-", "_")
        return under if under in self.features else None

    def vmx_names(self) -> frozenset[str]:
        """The vmx-* feature names this libvirt knows."""
        return frozenset(f for f in self.features if f.startswith("vmx-"))


def parse_cpu_map_dir(directory: str, version: str = "installed") -> CpuMap:
    """Read the x86 models and features of a ``cpu_map`` directory the way libvirt does.

    :raise InputError: a missing or malformed ``index.xml`` or included file.
    """
    index = os.path.join(directory, "index.xml")
    models: set[str] = set()
    features: set[str] = set()
    aliases: dict[str, str] = {}
    for root in _x86_files(index, directory):
        for feat in root.iter("feature"):
            name = feat.get("name")
            if name is None or not (feat.find("cpuid") is not None or feat.find("msr") is not None):
                continue
            features.add(name)
            for alias in feat.findall("alias"):
                if alias.get("source") == "qemu" and alias.get("name"):
                    aliases[str(alias.get("name"))] = name
        for model in root.findall("model"):
            if model.get("name"):
                models.add(str(model.get("name")))
    if not models:
        raise InputError("no x86 CPU models found", file=index)
    return CpuMap(version, directory, frozenset(models), frozenset(features), aliases)


def _parse(path: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise InputError(f"cannot read libvirt cpu_map file: {err}", file=path) from None


def _x86_files(index: str, directory: str) -> Iterable[ET.Element]:
    root = _parse(index)
    for arch in root.findall("arch"):
        if arch.get("name") != "x86":
            continue
        yield arch
        for inc in arch.findall("include"):
            name = inc.get("filename")
            if name:
                yield _parse(os.path.join(directory, os.path.basename(name)))


def _bundled_dir() -> str:
    return data_path("libvirt")


def bundled_versions() -> list[str]:
    """``X.Y`` of every bundled snapshot, oldest first."""
    out = []
    for name in os.listdir(_bundled_dir()):
        if name.startswith("cpu_map-") and name.endswith(".yaml"):
            out.append(name[len("cpu_map-"):-len(".yaml")])
    return sorted(out, key=_version_key)


def _version_key(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        raise InputError(f"--libvirt-version {v!r}: expected MAJOR.MINOR such as 9.0") from None


@functools.lru_cache(maxsize=1)
def vmx_names_known_from() -> tuple[int, ...]:
    """The first libvirt release known to name vmx-* features (``data/libvirt/facts.yaml``, with its sources)."""
    with open(os.path.join(_bundled_dir(), "facts.yaml"), encoding="utf-8") as fh:
        return _version_key(str(yaml.safe_load(fh)["vmx_names_known_from"]))


@functools.cache
def _load_bundled(version: str) -> CpuMap:
    path = os.path.join(_bundled_dir(), f"cpu_map-{version}.yaml")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return CpuMap(str(data["libvirt"]), path, frozenset(data["models"]), frozenset(data["features"]),
                  dict(data.get("qemu_aliases") or {}))


def with_registry_vmx(cmap: CpuMap, version: str) -> CpuMap:
    """``cmap`` targeting libvirt ``version`` >= :data:`VMX_NAMES_KNOWN_FROM`: plus the registry's libvirt
    vmx-* names (and their libvirt aliases of QEMU's misspelt properties)."""
    reg = registry()
    vmx = {f.libvirt for f in reg.features.values() if f.libvirt}
    aliases = dict(cmap.qemu_aliases)
    for f in reg.features.values():
        if f.libvirt and f.qemu and f.qemu != f.libvirt:
            aliases.setdefault(f.qemu, f.libvirt)
    return CpuMap(version, f"{cmap.source} + registry.yaml libvirt vmx-* names", cmap.models,
                  cmap.features | frozenset(v for v in vmx if v), aliases)


@functools.cache
def load_cpu_map(version: str | None = None) -> CpuMap:
    """The cpu_map to target: ``None`` = the installed libvirt's (``$QEMU_EVMCS_LIBVIRT_CPU_MAP`` first),
    else the newest bundled snapshot; ``X.Y`` = that release (see the module docstring).

    :raise InputError: a malformed version, or one older than every bundled snapshot.
    """
    if version is None:
        directory = os.environ.get(ENV_CPU_MAP) or INSTALLED
        if os.path.exists(os.path.join(directory, "index.xml")):
            return parse_cpu_map_dir(directory)
        version = bundled_versions()[-1]
    want = _version_key(version)
    older = [v for v in bundled_versions() if _version_key(v) <= want]
    if not older:
        raise InputError(f"--libvirt-version {version}: older than every bundled cpu_map snapshot "
                         f"({', '.join(bundled_versions())})")
    cmap = _load_bundled(older[-1])
    if want >= vmx_names_known_from() and not cmap.vmx_names():
        return with_registry_vmx(cmap, version)
    return CpuMap(version, cmap.source, cmap.models, cmap.features, cmap.qemu_aliases)


@dataclass(frozen=True)
class LibvirtModel:
    """How a QEMU model is written for libvirt: a libvirt model plus CPUID feature changes.

    :param name: the libvirt (= QEMU unversioned/alias) model name.
    :param qemu: the QEMU model asked for.
    :param typename: QEMU's QOM type of ``name`` (for ``-global TYPE.prop=...``).
    :param require: QEMU features ``qemu`` has and ``name`` lacks.
    :param disable: QEMU features ``name`` has and ``qemu`` lacks.
    :param vmx_props: QEMU vmx-* properties ``name`` turns on by default (with ``vmx=on``).
    """

    name: str
    qemu: str
    typename: str
    require: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    vmx_props: frozenset[str] = frozenset()


def _family(name: str) -> str:
    base, sep, ver = name.rpartition("-v")
    return base if sep and ver.isdigit() else name


def libvirt_model(qemu_model: str, snap: QemuSnapshot, cmap: CpuMap) -> LibvirtModel:
    """The libvirt model closest to QEMU's ``qemu_model`` (itself when libvirt knows the name).

    Closest: fewest CPUID features differing in QEMU's own definitions (the snapshot), then the same
    model family (``Skylake-Server`` for ``Skylake-Server-v5``), then the name. The differences are exact,
    so ``<model>NAME</model>`` plus ``require``/``disable`` gives the guest ``qemu_model``'s CPUID.

    :raise InputError: ``qemu_model`` is not in the snapshot, or no libvirt model is.
    """
    want = snap.get(qemu_model)
    want_feats = want.features - {"vmx"}
    best: tuple[tuple[int, int, str], str] | None = None
    candidates = [qemu_model] if qemu_model in cmap.models else sorted(cmap.models)
    for name in candidates:
        if not snap.has(name):
            continue
        cand = snap.get(name)
        if cand.vendor != want.vendor:
            continue
        diff = len(want_feats ^ (cand.features - {"vmx"}))
        same_family = _family(cand.alias_of or name) == _family(want.alias_of or qemu_model)
        key = (diff, 0 if same_family else 1, name)
        if best is None or key < best[0]:
            best = (key, name)
    if best is None:
        raise InputError(f"no libvirt {cmap.version} CPU model for QEMU model {qemu_model!r}")
    chosen = snap.get(best[1])
    have = chosen.features - {"vmx"}
    return LibvirtModel(name=best[1], qemu=qemu_model, typename=chosen.typename or f"{best[1]}-x86_64-cpu",
                        require=tuple(sorted(want_feats - have)), disable=tuple(sorted(have - want_feats)),
                        vmx_props=chosen.vmx_props)
