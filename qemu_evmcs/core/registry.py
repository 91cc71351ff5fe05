"""The VMX feature registry: MSRs, feature words and named bits, loaded from package data.

Why a registry: QEMU, libvirt, vmxcap and Linux each name the same VMX bit
differently (and QEMU misspells two of them). Keeping one table in
``data/registry.yaml`` means no module repeats a bit number, and a name from
any of those tools resolves to the same :class:`Feature`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
import os
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Collection, Mapping

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.parsecache import cached_parse, yaml_id

if TYPE_CHECKING:
    from typing import Any


MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Msr:
    """One VMX capability MSR.

    ``layout`` is ``info``, ``ctl`` (allowed-0 low / allowed-1 high),
    ``allowed1`` (64-bit allowed-1 bitmap) or ``fixed``.
    """

    name: str
    index: int
    layout: str
    word: str | None
    true: str | None
    #: Where the L1 guest's value comes from (registry.yaml ``guest``): ``qemu-word``, ``qemu-word-host``,
    #: ``qemu-constant``, ``kvm-true``, ``kvm-cpuid`` or ``not-emulated``.
    guest: str = "qemu-word"
    #: vmxcap labels of the fields/bits QEMU copies from KVM's value into the guest's (``qemu-word-host``).
    host_fields: tuple[str, ...] = ()

    @property
    def host_dependent(self) -> bool:
        """Can this MSR's guest value differ between two hosts running one configuration?

        Only for values QEMU builds from its feature words (the host decides which features exist) and values KVM
        derives from them; QEMU's own constants and KVM's CPUID-derived CR fixed-1 values never differ.
        """
        return self.guest in ("qemu-word", "qemu-word-host", "kvm-true")

    @property
    def is_true_form(self) -> bool:
        """``True`` for IA32_VMX_TRUE_*_CTLS."""
        return "_TRUE_" in self.name


@dataclass(frozen=True)
class Word:
    """A group of features sharing one MSR layout (QEMU calls these feature words)."""

    name: str
    qemu_msr: str | None
    vmxcap: str
    always_on: int


@dataclass(frozen=True)
class Feature:
    """One named VMX bit.

    For control words ``bit`` is the control bit; in the ``ctl`` MSR its
    allowed-1 position is ``bit + 32``. For other words it is the MSR bit.
    """

    name: str
    word: str
    bit: int
    qemu: str | None
    qemu_typo: bool
    libvirt: str | None
    libvirt_aliases: tuple[str, ...]
    vmxcap: str | None
    linux: str | None
    unverified: bool

    @property
    def mask(self) -> int:
        """The bit as a mask in the control/capability word (not the MSR)."""
        return 1 << self.bit


@dataclass(frozen=True)
class Field_:
    """A multi-bit value vmxcap prints as an integer (revision, VMCS size, ...)."""

    word: str
    lo: int
    hi: int
    vmxcap: str


@dataclass
class Registry:
    """All registry data with lookups by every known name."""

    msrs: dict[str, Msr]
    words: dict[str, Word]
    features: dict[str, Feature]
    fields: list[Field_]
    vmxcap_order: list[str]
    _by_alias: dict[str, Feature] = field(default_factory=dict)
    _by_index: dict[int, Msr] = field(default_factory=dict)
    _by_qemu: dict[str, list[Feature]] = field(default_factory=dict)
    _by_word: dict[str, tuple[Msr, ...]] = field(default_factory=dict)
    _props: tuple[tuple[str, frozenset[str]], ...] = ()
    _features_of_word: dict[str, tuple[Feature, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        by_word: dict[str, list[Msr]] = {}
        for msr in self.msrs.values():
            self._by_index[msr.index] = msr
            if msr.word is not None:
                by_word.setdefault(msr.word, []).append(msr)
        # msrs_of_word() is asked for every feature of every view (600 times for one explain): an index.
        self._by_word.update((w, tuple(ms)) for w, ms in by_word.items())
        # qemu_bits() is called for every property of every guest start: an index, not a scan of every bit.
        features_of_word: dict[str, list[Feature]] = {}
        for feat in self.features.values():
            if feat.qemu:
                self._by_qemu.setdefault(feat.qemu, []).append(feat)
            features_of_word.setdefault(feat.word, []).append(feat)
        # Every guest start states each property with its bits (qemu_properties) and reads each word's features.
        self._props = tuple((q, frozenset(f.name for f in feats)) for q, feats in self._by_qemu.items())
        self._features_of_word.update((w, tuple(sorted(fs, key=lambda f: f.bit))) for w, fs in features_of_word.items())
        for feat in self.features.values():
            self._by_alias.setdefault(feat.name, feat)
        for feat in self.features.values():
            for alias in (feat.libvirt, *feat.libvirt_aliases, feat.linux):
                if alias:
                    self._by_alias.setdefault(alias, feat)
            # QEMU's misspelt duplicate names resolve to the correctly spelt bit they share a name with.
            if feat.qemu and not feat.qemu_typo:
                self._by_alias.setdefault(feat.qemu, feat)

    # -- MSRs ---------------------------------------------------------------
    def msr(self, name_or_index: str | int) -> Msr:
        """Look up an MSR by ``IA32_VMX_*`` name or index; :class:`InputError` if unknown."""
        if isinstance(name_or_index, int):
            try:
                return self._by_index[name_or_index]
            except KeyError:
                raise InputError(f"unknown VMX MSR index {name_or_index:#x}") from None
        try:
            return self.msrs[name_or_index]
        except KeyError:
            raise InputError(f"unknown VMX MSR name {name_or_index!r}") from None

    def label_mask(self, word: str, labels: tuple[str, ...]) -> int:
        """Mask, in ``word``'s info MSR, of the fields and single-bit features whose vmxcap label is in ``labels``."""
        mask = 0
        for f in self.fields:
            if f.word == word and f.vmxcap in labels:
                mask |= ((1 << (f.hi - f.lo + 1)) - 1) << f.lo
        for feat in self.features.values():
            if feat.word == word and feat.vmxcap in labels:
                mask |= feat.mask
        return mask

    def host_field_mask(self, msr: str) -> int:
        """Bits of ``msr`` QEMU copies from KVM's value into the guest's (registry ``host_fields``)."""
        m = self.msrs[msr]
        return self.label_mask(m.word, m.host_fields) if m.word and m.host_fields else 0

    def msr_names(self) -> list[str]:
        """All MSR names in index order."""
        return [m.name for m in sorted(self.msrs.values(), key=lambda m: m.index)]

    def msrs_of_word(self, word: str) -> list[Msr]:
        """The MSRs (TRUE and non-TRUE) that carry a word (in registry order)."""
        return list(self._by_word.get(word, ()))

    # -- features -----------------------------------------------------------
    def get(self, name: str) -> Feature | None:
        """A feature by canonical, QEMU, libvirt or Linux name; ``None`` if unknown."""
        return self._by_alias.get(name)

    def feature(self, name: str) -> Feature:
        """Like :meth:`get` but raises :class:`InputError` naming the unknown feature."""
        feat = self.get(name)
        if feat is None:
            raise InputError(f"unknown VMX feature {name!r}")
        return feat

    def qemu_bits(self, qemu_name: str) -> list[Feature]:
        """Every bit a QEMU property controls (a typo'd name controls two bits)."""
        return list(self._by_qemu.get(qemu_name, ()))

    def qemu_properties(self) -> tuple[tuple[str, frozenset[str]], ...]:
        """Every QEMU ``vmx-*`` property, in registry order (of its first bit), with the canonical names of the
        bits it controls: what "for each feature, its property unless seen, and that property's bits" works
        out, once (every guest start states each property, several times per negotiation)."""
        return self._props

    def word_features(self, word: str) -> list[Feature]:
        """Features of a word, by bit."""
        return list(self._features_of_word.get(word, ()))

    def word_mask(self, names: list[str], word: str) -> int:
        """OR of the masks of ``names``; each must belong to ``word``."""
        mask = 0
        for name in names:
            feat = self.feature(name)
            if feat.word != word:
                raise InputError(f"feature {name} belongs to word {feat.word}, not {word}")
            mask |= feat.mask
        return mask

    def in_order(self, names: Collection[str]) -> list[str]:
        """The canonical feature names among ``names``, in registry order (the order every list of features is
        printed in). Pass a set: each feature is looked up once."""
        return [n for n in self.features if n in names]

    def all_names(self) -> list[str]:
        """Every name the registry accepts (for "did you mean" suggestions)."""
        return sorted(self._by_alias)


#: Values of an MSR's ``guest`` key (registry.yaml explains each).
GUEST_SOURCES = ("qemu-word", "qemu-word-host", "qemu-constant", "kvm-true", "kvm-cpuid", "not-emulated")


def _req(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise InputError(f"missing key {key!r}", file="registry.yaml", key=where)
    return entry[key]


def parse_registry(data: Mapping[str, Any]) -> Registry:
    """Build a :class:`Registry` from the YAML mapping (validated loudly)."""
    msrs: dict[str, Msr] = {}
    for i, m in enumerate(data["msrs"]):
        where = f"msrs[{i}]"
        msr = Msr(
            name=_req(m, "name", where),
            index=int(_req(m, "index", where)),
            layout=_req(m, "layout", where),
            word=m.get("word"),
            true=m.get("true_msr"),
            guest=m.get("guest", "qemu-word"),
            host_fields=tuple(m.get("host_fields", ())),
        )
        if msr.guest not in GUEST_SOURCES:
            raise InputError(f"unknown guest source {msr.guest!r}", file="registry.yaml", key=where)
        if msr.name in msrs:
            raise InputError(f"duplicate MSR {msr.name}", file="registry.yaml", key=where)
        msrs[msr.name] = msr
    words: dict[str, Word] = {}
    for wname, w in data["words"].items():
        words[wname] = Word(
            name=wname, qemu_msr=w.get("qemu_msr"), vmxcap=w["vmxcap"], always_on=int(w.get("always_on", 0))
        )
    features: dict[str, Feature] = {}
    seen_bits: dict[tuple[str, int], str] = {}
    for i, f in enumerate(data["features"]):
        where = f"features[{i}]"
        feat = Feature(
            name=_req(f, "name", where),
            word=_req(f, "word", where),
            bit=int(_req(f, "bit", where)),
            qemu=f.get("qemu"),
            qemu_typo=bool(f.get("qemu_typo", False)),
            libvirt=f.get("libvirt"),
            libvirt_aliases=tuple(f.get("libvirt_aliases", ())),
            vmxcap=f.get("vmxcap"),
            linux=f.get("linux"),
            unverified=bool(f.get("unverified", False)),
        )
        if feat.word not in words:
            raise InputError(f"unknown word {feat.word!r}", file="registry.yaml", key=where)
        if feat.name in features:
            raise InputError(f"duplicate feature {feat.name}", file="registry.yaml", key=where)
        if (feat.word, feat.bit) in seen_bits:
            raise InputError(f"bit {feat.bit} of {feat.word} defined twice", file="registry.yaml", key=where)
        seen_bits[(feat.word, feat.bit)] = feat.name
        features[feat.name] = feat
    fields = [Field_(word=x["word"], lo=int(x["lo"]), hi=int(x["hi"]), vmxcap=x["vmxcap"]) for x in data["fields"]]
    return Registry(msrs=msrs, words=words, features=features, fields=fields, vmxcap_order=list(data["vmxcap_order"]))


def load_data(name: str) -> Any:
    """Load a YAML file of ``qemu_evmcs/data`` with a safe loader (libyaml's ``CSafeLoader`` when present:
    the registry is read by every command, and the C loader saves ~0.1 s of start-up), through the per-user
    parse cache (:mod:`~qemu_evmcs.core.parsecache`: the same text is parsed once, not at every start; the
    key's :func:`~qemu_evmcs.core.parsecache.yaml_id` says whether libyaml is there)."""
    with open(data_path(name), encoding="utf-8") as fh:
        text = fh.read()
    return cached_parse(text, _parse_data, parser="data", parser_files=(__file__,), yaml_version=yaml_id())


def _parse_data(text: str) -> Any:
    """A cache miss: PyYAML is imported now, not at start-up (:mod:`~qemu_evmcs.core.lazy`). libyaml's safe
    loader when built in, else PyYAML's: both construct plain data only."""
    yaml = lazy.module("yaml")
    safe_loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=safe_loader)


#: ``qemu_evmcs/data``. Package data is read as plain files next to the code (how setuptools installs it);
#: ``importlib.resources`` would cost every command ~5 ms of imports (pathlib, zipfile, tempfile) for nothing.
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")


def data_path(*parts: str) -> str:
    """A file or directory under ``qemu_evmcs/data``."""
    return os.path.join(DATA_DIR, *parts)


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The package registry (loaded once)."""
    return parse_registry(load_data("registry.yaml"))
