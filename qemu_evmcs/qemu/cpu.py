"""QEMU's x86 CPU model as far as VMX and Hyper-V enlightenments go (QEMU 7.2 ``target/i386``).

This mirrors, step by step, what QEMU does when it realizes a vCPU:

1. **model defaults** -- ``host``/``max`` (``max_features``) start empty and are
   filled from what the accelerator supports; named models come from a
   pluggable *model provider* (see below); ``qemu64``/``base`` are built in;
2. **properties** -- ``-cpu`` ``key=value`` properties, then ``+feat``/``-feat``;
   every explicitly set feature is a *user feature* and is never overridden;
3. **expansion** (``x86_cpu_expand_features``) -- ``max_features`` ORs in every
   supported **named** bit (``migratable``: optional = allowed1 & ~allowed0 of
   KVM's feature MSR for control words, qemu.md §2.1); then
   ``feature_dependencies[]`` drop dependent bits (``vmx`` gates the
   primary/pin/exit/entry/misc/basic words, ``vmx-secondary-ctls`` the
   secondary word, ``vmx-ept`` the EPT half of EPT_VPID_CAP, ...), warning for
   explicitly requested ones; then ``kvm_hyperv_expand_features`` when KVM has
   ``KVM_CAP_SYS_HYPERV_CPUID``;
4. **filtering** (``x86_cpu_filter_features``) -- requested bits the host
   lacks are dropped with ``warning: host doesn't support requested feature:
   MSR(48DH).vmx-posted-intr [bit 7]``; ``enforce`` makes that fatal;
5. at vCPU init (:mod:`.startup`) the Hyper-V CPUID leaves (:meth:`X86Cpu.hv_leaves`)
   and the VMX MSR values (:meth:`X86Cpu.vmx_msr_entries`, ``kvm_msr_entry_add_vmx``)
   are handed to the simulated KVM.

Bit numbers of VMX features are never written here: they come from the
registry (``data/registry.yaml``) by QEMU property name. The CPUID bits that
gate VMX features and the Hyper-V CPUID bits are QEMU/TLFS constants, not VMX
bits, and live in the tables below.

**Model provider plug-in point.** Named models (``Skylake-Server-v5``) are
supplied by a provider: an object with ``features(name) -> Optional[set of
QEMU feature names]`` (``None`` = unknown model) and ``names() -> list``.
Register one with :func:`register_model_provider`, or name one in the
environment variable ``QEMU_EVMCS_SIM_MODEL_PROVIDER=package.module:attr``
(an instance, or a zero-argument factory) so that a simulator child process
picks it up. :func:`load_model_features` resolves a name through the
providers and raises QEMU's ``unable to find CPU model 'X'`` otherwise.
Returned names may be ``vmx-*`` QEMU property names and the CPUID flags
modelled here (``vmx``, ``lm``, ``xsaves``, ...). CPUID flags that gate a
returned ``vmx-*`` feature (``rdseed`` for ``vmx-rdseed-exit``) default on.

**Simulation assumptions** (the host profile records VMX MSRs, not CPUID):
KVM reports CPUID ``vmx`` iff the host is Intel with nested VMX; ``lm``
always; a CPUID flag that gates a VMX feature is taken as supported iff KVM
reports that VMX feature (or, with no VMX MSRs at all, for the common ones).
Hyper-V features other than eVMCS-related ones are assumed supported whenever
KVM has Hyper-V support.

**Project plug-in option (not in real QEMU):** ``hv-evmcs-perf-global-ctrl=on``
sets CPUID 0x4000000A.EBX bit 0 (HV_X64_NESTED_EVMCS1_PERF_GLOBAL_CTRL), the
bit KVM 6.1+ reads to show VM_{EXIT,ENTRY}_LOAD_IA32_PERF_GLOBAL_CTRL to an
eVMCS L1. It behaves like a QEMU hv-* feature: it requires ``hv-evmcs`` and
is "not supported by kernel" unless KVM reports the bit (6.1+).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.qemu.options import BOOL_TRUE, qapi_bool
from qemu_evmcs.qemu.compose import CTL_WRITES, compose_vmx_msrs, supported_msr_feature
from qemu_evmcs.qemu.compose import DEFAULT_EVMCS_VERSION as DEFAULT_EVMCS_VERSION  # re-exported
from qemu_evmcs.qemu.compose import make_vmx_msr_value as make_vmx_msr_value  # re-exported (QEMU's helper, one copy)
from qemu_evmcs.core.registry import MASK32, Registry, registry
from qemu_evmcs.kvm.simkvm import (HV_CPUID_ENLIGHTMENT_INFO, HV_CPUID_NESTED_FEATURES, KVM_CAP_SYS_HYPERV_CPUID,
                                   SimKvm)
from qemu_evmcs.qemu.features import (CPUID_BY_NAME, CPUID_FLAGS, HV_ALIASES, HV_BY_PROP, HV_CPUID_FEATURES,
                                      HV_FEATURES, hv_feature_supported,
                             HvFeature)
from qemu_evmcs.core.hyperv import (HV_APIC_ACCESS_RECOMMENDED, HV_CPU_DYNAMIC_PARTITIONING_AVAILABLE,
                                    HV_CPUID_IMPLEMENT_LIMITS, HV_CPUID_VENDOR_AND_MAX_FUNCTIONS,
                                    HV_HYPERCALL_AVAILABLE)
from qemu_evmcs.qemu.cpuspec import PROG, CpuSpec, QemuError
from qemu_evmcs.qemu.models import DEFAULT_QEMU_VERSION, QemuSnapshot, load_snapshot
from qemu_evmcs.core.errors import InputError

if TYPE_CHECKING:
    from typing import Protocol, TypeGuard



# --------------------------------------------------------------------------- constants (QEMU / TLFS)

#: QEMU's VMX feature words in ``FeatureWord`` enum order (the order of filter warnings).
VMX_WORDS: tuple[str, ...] = ("procbased", "secondary", "pinbased", "exit", "entry", "misc", "ept_vpid", "basic",
                              "vmfunc")
#: Words written through ``make_vmx_msr_value`` (control words with default1 bits).
CTL_WORDS = tuple(word for _, word in CTL_WRITES)

#: ``hv-spinlocks`` default: never notify.
HYPERV_SPINLOCK_NEVER_NOTIFY = 0xFFFFFFFF


#: Flags a host without VMX MSRs is assumed to have (simulation assumption, see the module docstring).
_COMMON_HOST_FLAGS = frozenset({"lm", "rdrand", "rdseed", "rdtscp", "invpcid", "xsaves"})
#: CPUID flags TCG supports among the modelled ones (TCG_*_FEATURES: no VMX, no XSAVES, no MPX).
_TCG_FLAGS = frozenset({"lm", "svm", "rdtscp", "rdrand", "rdseed", "invpcid"})


#: Simulation of design (a) of the 2022 thread (v2 06/28 KVM_CAP_HYPERV_ENLIGHTENED_VMCS2, never merged; not a
#: QEMU property): ``x-hv-evmcs-revision=N`` asks KVM for eVMCS revision N with KVM_ENABLE_CAP(VMCS2) when the
#: simulated kernel has that capability (``--variant revision``, 6.1+); elsewhere revision 1 is the legacy
#: KVM_CAP_HYPERV_ENLIGHTENED_VMCS and any higher revision is refused.
EVMCS_REVISION_PROP = "x-hv-evmcs-revision"

#: The -cpu switches a parsed model keeps, and the field of each.
_SWITCH_FIELDS = {"check": "check", "enforce": "enforce", "migratable": "migratable",
                  "x-force-features": "force_features"}

#: Other CPU properties accepted and recorded without effect on VMX/eVMCS (a representative subset).
_OTHER_BOOL_PROPS = frozenset({
    "hv-enforce-cpuid", "x-hv-synic-kvm-only", "pmu", "x2apic", "hypervisor", "kvm", "tsc-deadline", "l3-cache",
    "topoext", "invtsc", "host-phys-bits", "host-cache-info", "kvm-pv-eoi", "kvm-pv-unhalt", "kvmclock",
    "kvm-steal-time", "kvm-asyncpf", "kvm-nopiodelay", "kvmclock-stable-bit", "kvm-pv-ipi", "kvm-pv-tlb-flush",
    "kvm-poll-control", "kvm-pv-sched-yield", "arat", "aes", "avx", "avx2", "pcid", "md-clear", "spec-ctrl", "ssbd",
    "pdpe1gb", "hle", "rtm", "monitor", "lahf-lm", "sse4.1", "sse4.2", "ssse3", "fma", "movbe", "popcnt", "xsave",
    "xsaveopt", "xsavec", "fsgsbase", "smep", "smap", "umip", "stibp", "arch-capabilities", "tsx-ctrl", "lbrv",
    "npt", "nrip-save", "fill-mtrr-mask", "full-cpuid-auto-level", "vmware-cpuid-freq", "tcg-cpuid", "lmce",
    "x-force-features",
})
_OTHER_VALUE_PROPS = frozenset({
    "hv-vendor-id", "hv-version-id-build", "hv-version-id-major", "hv-version-id-minor", "hv-version-id-spack",
    "hv-version-id-sbranch", "hv-version-id-snumber", "x-hv-max-vps", "hv-no-nonarch-coresharing", "phys-bits",
    "model-id", "vendor", "family", "model", "stepping", "tsc-frequency", "tsc-freq", "level", "xlevel",
    "min-level", "min-xlevel", "apic-id", "kvm-no-smi-migration", "ucode-rev", "guest-phys-bits",
})

#: Models built into the simulator (QEMU has them without any snapshot).
BUILTIN_MODELS = ("host", "max", "base", "qemu64")


# --------------------------------------------------------------------------- registry helpers

@functools.lru_cache(maxsize=1)
def _qemu_props() -> dict[str, tuple[str, int]]:
    """QEMU vmx-* property name -> (word, mask); a misspelt name controls two bits (ORed)."""
    reg = registry()
    out: dict[str, tuple[str, int]] = {}
    for feat in reg.features.values():
        if feat.qemu is None or feat.word not in VMX_WORDS:
            continue
        word, mask = out.get(feat.qemu, (feat.word, 0))
        out[feat.qemu] = (word, mask | feat.mask)
    return out


@functools.lru_cache(maxsize=1)
def vmx_prop_names() -> tuple[str, ...]:
    """Every QEMU ``vmx-*`` property, in word order then bit order (sorted once: a start-up asks 4 times per
    host)."""
    props = _qemu_props()
    return tuple(sorted(props, key=lambda n: (VMX_WORDS.index(props[n][0]), props[n][1].bit_length())))


@functools.cache
def named_mask(word: str) -> int:
    """Bits of ``word`` that have a QEMU name (the ``migratable`` mask)."""
    mask = 0
    for w, m in _qemu_props().values():
        if w == word:
            mask |= m
    return mask


def _bit_names(word: str, mask: int, reg: Registry) -> list[tuple[int, str | None]]:
    """(bit, QEMU name or None) for each set bit of ``mask`` in ``word``."""
    by_bit = {f.bit: f.qemu for f in reg.features.values() if f.word == word}
    return [(b, by_bit.get(b)) for b in range(64) if mask >> b & 1]


def word_msr_index(word: str, reg: Registry | None = None) -> int:
    """Index of the MSR QEMU reads for a VMX feature word (``.msr.index`` of feature_word_info)."""
    reg = reg or registry()
    msr = reg.words[word].qemu_msr
    assert msr is not None
    return reg.msrs[msr].index


def feature_word_description(word: str) -> str:
    """``MSR(48DH)`` as QEMU's ``feature_word_description()`` prints it."""
    return f"MSR({word_msr_index(word):02X}H)"


# --------------------------------------------------------------------------- model providers

if TYPE_CHECKING:
    class ModelProvider(Protocol):
        """Supplies named CPU models (QEMU model snapshots)."""

        def features(self, name: str) -> AbstractSet[str] | None:
            """QEMU feature names of model ``name`` (``vmx-*`` and modelled CPUID flags), ``None`` if unknown."""

        def names(self) -> Sequence[str]:
            """Every model name this provider knows."""


def is_model_provider(obj: object) -> TypeGuard[ModelProvider]:
    """Whether ``obj`` has a ``features`` and a ``names`` method: what ``isinstance`` of a
    ``runtime_checkable`` protocol checks, without importing ``typing`` at run time (core/typecheck.py)."""
    return callable(getattr(obj, "features", None)) and callable(getattr(obj, "names", None))


_providers: list[ModelProvider] = []
_env_loaded: list[str] = []
ENV_MODEL_PROVIDER = "QEMU_EVMCS_SIM_MODEL_PROVIDER"


def register_model_provider(provider: ModelProvider) -> None:
    """Add a provider of named CPU models (later registrations win)."""
    _providers.insert(0, provider)


def unregister_model_provider(provider: ModelProvider) -> None:
    """Remove a provider added with :func:`register_model_provider` (tests)."""
    if provider in _providers:
        _providers.remove(provider)


def _load_env_provider() -> None:
    spec = os.environ.get(ENV_MODEL_PROVIDER)
    if not spec or spec in _env_loaded:
        return
    _env_loaded.append(spec)
    mod_name, _, attr = spec.partition(":")
    try:
        obj: object = getattr(lazy.module(mod_name), attr or "provider")   # a plug-in the user names
    except (ImportError, AttributeError) as err:
        raise QemuError(f"{ENV_MODEL_PROVIDER}={spec}: cannot load model provider ({err})") from None
    if not is_model_provider(obj) and callable(obj):
        obj = obj()
    if not is_model_provider(obj):
        raise QemuError(f"{ENV_MODEL_PROVIDER}={spec}: not a model provider (needs features() and names())")
    register_model_provider(obj)


class SnapshotModelProvider:
    """The default provider: QEMU 7.2's named models from the snapshot shipped with the package.

    Backed by :mod:`qemu_evmcs.qemu.models` (``qemu_evmcs/data/qemu-models/7.2/``): every model, version and
    alias (``Skylake-Server``, ``Skylake-Server-v5``). A model's features are its default ``vmx-*``
    properties plus the modelled CPUID flags it sets; ``vmx`` itself is *not* set by any named model
    (the snapshot's expansion asked for ``vmx=on``), so ``-cpu Skylake-Server-v5`` without ``vmx=on``
    requests no VMX feature, as in QEMU. Consulted after every registered provider.
    """

    def __init__(self, version: str | None = None) -> None:
        self.version = version

    def _snapshot(self) -> QemuSnapshot:
        try:
            return load_snapshot(self.version or DEFAULT_QEMU_VERSION)
        except InputError as err:
            raise QemuError(f"CPU model snapshot: {err}") from None

    def features(self, name: str) -> AbstractSet[str] | None:
        """The model's ``vmx-*`` properties and modelled CPUID flags, ``None`` if the snapshot lacks it."""
        snap = self._snapshot()
        if not snap.has(name):
            return None
        model = snap.get(name)
        return frozenset(model.vmx_props) | frozenset(f for f in model.features if f in CPUID_BY_NAME and f != "vmx")

    def names(self) -> Sequence[str]:
        """Every model name of the snapshot (sorted)."""
        return self._snapshot().names()

    def info(self, name: str) -> Mapping[str, object] | None:
        """``query-cpu-definitions`` details of a model: alias-of, deprecated, migration-safe, static."""
        snap = self._snapshot()
        if not snap.has(name):
            return None
        m = snap.get(name)
        out: dict[str, object] = {"deprecated": m.deprecated, "static": m.static,
                                  "migration-safe": True if m.migration_safe is None else m.migration_safe}
        if m.alias_of:
            out["alias-of"] = m.alias_of
        return out


#: The default provider (last in line): the shipped QEMU 7.2 snapshot.
DEFAULT_PROVIDER = SnapshotModelProvider()


def _all_providers() -> list[ModelProvider]:
    _load_env_provider()
    return [*_providers, DEFAULT_PROVIDER]


def model_info(name: str) -> Mapping[str, object] | None:
    """Details of a named model from the first provider that has an ``info(name)`` answer."""
    for provider in _all_providers():
        info = getattr(provider, "info", None)
        if callable(info):
            ans = info(name)
            if ans is not None:
                return dict(ans)
    return None


def load_model_features(name: str) -> frozenset[str]:
    """Feature names of a named (non built-in) CPU model, through the registered providers.

    :raise QemuError: ``unable to find CPU model 'X'`` when no provider knows it, or a provider returned
        a name the simulator does not model.
    """
    for provider in _all_providers():
        feats = provider.features(name)
        if feats is not None:
            props = _qemu_props()
            bad = sorted(f for f in feats if f not in props and f not in CPUID_BY_NAME)
            if bad:
                raise QemuError(f"CPU model '{name}': unknown feature(s) {', '.join(bad)} from the model provider")
            return frozenset(feats)
    raise QemuError(f"unable to find CPU model '{name}'")


def list_models() -> list[str]:
    """Built-in models plus every provider's models."""
    out = list(BUILTIN_MODELS)
    for provider in _all_providers():
        out += [n for n in provider.names() if n not in out]
    return out


def check_model(name: str) -> None:
    """Fail like QEMU's ``parse_cpu_option`` for an unknown model (before anything else starts).

    :raise QemuError: ``unable to find CPU model 'X'``.
    """
    if name not in BUILTIN_MODELS:
        load_model_features(name)


# --------------------------------------------------------------------------- accelerators

class KvmLog:
    """The simulated ioctl log: system-level calls and each vCPU's calls, in order."""

    def __init__(self) -> None:
        self.entries: list[dict[str, object]] = []
        self._drained: dict[int, int] = {}

    def add(self, vcpu: int | None, ioctl: str, arg: str, result: str) -> None:
        """Record one system-level (``vcpu=None``) or simulator-side call."""
        self.entries.append({"seq": len(self.entries), "vcpu": vcpu, "ioctl": ioctl, "arg": arg, "result": result})

    def drain(self, index: int, log: Sequence[tuple[str, str, str]]) -> None:
        """Append the new entries of a :class:`~qemu_evmcs.kvm.simkvm.SimVcpu` log."""
        start = self._drained.get(index, 0)
        for ioctl, arg, result in log[start:]:
            self.add(index, ioctl, arg, result)
        self._drained[index] = len(log)


class Accel:
    """What an accelerator supports (``x86_cpu_get_supported_feature_word`` and friends)."""

    name = "tcg"
    #: ``accel_uses_host_cpuid()``: the wording of warnings ("host" vs "TCG").
    uses_host_cpuid = False

    def supported_word(self, word: str, migratable: bool) -> int:
        """Supported bits of a VMX word (TCG supports none)."""
        return 0

    def cpuid_supported(self, flag: str) -> bool:
        """Is a modelled CPUID flag supported?"""
        return flag in _TCG_FLAGS

    def hyperv_cap(self) -> bool:
        """``KVM_CAP_HYPERV``: may Hyper-V enlightenments be used at all?"""
        return False


class KvmAccel(Accel):
    """The simulated KVM of a host profile, seen through the system fd (``kvm_state``)."""

    name = "kvm"
    uses_host_cpuid = True

    def __init__(self, kvm: SimKvm, log: KvmLog) -> None:
        self.kvm = kvm
        self.log = log
        self._msrs: dict[str, int] | None = None
        self._sys_hv: dict[int, dict[str, int]] | None = None
        self._caps: dict[int, int] = {}

    @property
    def profile(self) -> HostProfile:
        """The host profile behind this KVM."""
        return self.kvm.profile

    def check_extension(self, cap: int, label: str) -> int:
        """KVM_CHECK_EXTENSION, logged once per capability."""
        if cap not in self._caps:
            self._caps[cap] = self.kvm.check_extension(cap)
            self.log.add(None, "CHECK_EXTENSION", label, str(self._caps[cap]))
        return self._caps[cap]

    def feature_msrs(self) -> dict[str, int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST + KVM_GET_MSRS on the system fd (``kvm_feature_msrs``)."""
        if self._msrs is None:
            self._msrs = self.kvm.feature_msrs()
            self.log.add(None, "GET_MSR_FEATURE_INDEX_LIST", "", f"{len(self._msrs)} VMX MSRs")
        return self._msrs

    def supported_msr_feature(self, name: str) -> int:
        """``kvm_arch_get_supported_msr_feature``: control words as allowed1 & ~allowed0, others raw."""
        return supported_msr_feature(name, self.feature_msrs().get(name, 0))

    def supported_word(self, word: str, migratable: bool) -> int:
        msr = registry().words[word].qemu_msr
        assert msr is not None
        value = self.supported_msr_feature(msr)
        return value & named_mask(word) if migratable else value

    def cpuid_supported(self, flag: str) -> bool:
        p = self.profile
        if flag == "vmx":
            return p.is_intel and p.nested
        if flag == "svm":
            return not p.is_intel
        if flag == "lm":
            return True
        gates = CPUID_BY_NAME[flag].gates
        if not self.feature_msrs():
            return flag in _COMMON_HOST_FLAGS
        props = _qemu_props()
        return any(self.supported_word(props[g][0], False) & props[g][1] for g in gates)

    def hyperv_cap(self) -> bool:
        k = self.kvm
        return p_kvm_hyperv(k)

    def sys_hv_cpuid(self) -> dict[int, dict[str, int]] | None:
        """KVM_GET_SUPPORTED_HV_CPUID on the system fd when KVM_CAP_SYS_HYPERV_CPUID exists, else ``None``."""
        if not self.check_extension(KVM_CAP_SYS_HYPERV_CPUID, "KVM_CAP_SYS_HYPERV_CPUID"):
            return None
        if self._sys_hv is None:
            self._sys_hv = self.kvm.get_supported_hv_cpuid()
            self.log.add(None, "GET_SUPPORTED_HV_CPUID", "system fd", _fmt_leaves(self._sys_hv))
        return self._sys_hv


def hv_flag_supported(prop: str, kvm: SimKvm) -> bool:
    """Would QEMU find ``hv-*`` flag ``prop`` supported by this host's KVM (``hyperv_feature_supported`` over what
    KVM reports for Hyper-V)? The negotiator's question before it simulates; the same rule as a vCPU's."""
    return p_kvm_hyperv(kvm) and hv_feature_supported(HV_BY_PROP[HV_ALIASES.get(prop, prop)], kvm.hv_cpuid(),
                                                      lambda since: kvm.version_at_least(getattr(kvm.facts, since)))


def p_kvm_hyperv(kvm: SimKvm) -> bool:
    """``KVM_CAP_HYPERV``: absent only with CONFIG_KVM_HYPERV=n (6.8+)."""
    return kvm.profile.kvm_hyperv or not kvm.version_at_least(kvm.facts.kvm_hyperv_config_since)


def _fmt_leaves(leaves: Mapping[int, Mapping[str, int]]) -> str:
    return " ".join(f"{leaf:#x}:" + ",".join(f"{r}={v:#x}" for r, v in regs.items() if v)
                    for leaf, regs in sorted(leaves.items()))


# --------------------------------------------------------------------------- the CPU

def _parse_bool_prop(typename: str, name: str, value: str) -> bool:
    on = qapi_bool(value)
    if on is None:
        raise QemuError(f"can't apply global {typename}.{name}={value}: Parameter '{name}' expects 'on' or 'off'")
    return on


def _parse_uint32_prop(typename: str, name: str, value: str) -> int:
    """A ``uint32`` property (``hv-spinlocks``, the eVMCS revision): any C integer literal from 0 to 2**32-1."""
    try:
        n = int(value, 0)
    except ValueError:
        n = -1
    if not 0 <= n <= 0xFFFFFFFF:
        raise QemuError(f"can't apply global {typename}.{name}={value}: Parameter '{name}' expects uint32_t")
    return n


class X86Cpu:
    """One x86 vCPU's feature state, from creation to filtering.

    :ivar features: VMX word -> set bits (control words: the optional controls; 64-bit words: the bits).
    :ivar user_features: VMX word -> bits the user set explicitly (on or off).
    :ivar filtered: VMX word -> bits dropped (unsupported or explicitly requested but dependency-dropped).
    :ivar cpuid: modelled CPUID flag -> on/off.
    :ivar hv: enabled ``hv-*`` bit properties.
    """

    def __init__(self, model: str, accel: Accel) -> None:
        self.model = model
        self.accel = accel
        self.typename = f"{model}-x86_64-cpu"
        self.features: dict[str, int] = {w: 0 for w in VMX_WORDS}
        self.user_features: dict[str, int] = {w: 0 for w in VMX_WORDS}
        self.filtered: dict[str, int] = {w: 0 for w in VMX_WORDS}
        #: Bits dropped by feature_dependencies[] (requested or not) and by the host filter.
        self.dep_dropped: dict[str, int] = {w: 0 for w in VMX_WORDS}
        self.host_filtered: dict[str, int] = {w: 0 for w in VMX_WORDS}
        #: QEMU vmx-* names requested by the model (when ``vmx`` is on) or explicitly by the user.
        self.requested_vmx: list[str] = []
        self.cpuid: dict[str, bool] = {f.name: False for f in CPUID_FLAGS}
        self.cpuid_user: set[str] = set()
        self.cpuid_filtered: list[str] = []
        self.hv: set[str] = set()
        self.hv_passthrough = False
        self.hv_spinlocks = HYPERV_SPINLOCK_NEVER_NOTIFY
        #: ``x-hv-evmcs-revision=N`` (simulation of design (a), never in QEMU): ``None`` = not given.
        self.evmcs_revision: int | None = None
        self.check = True
        self.enforce = False
        self.migratable = True
        self.force_features = False
        self.other: dict[str, str] = {}
        self.max_features = model in ("host", "max")
        #: QEMU names the named model itself sets (empty for host/max/base/qemu64).
        self.model_features: frozenset[str] = frozenset()
        self.expanded = False

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, spec: CpuSpec, accel: Accel) -> X86Cpu:
        """Instance + model defaults + ``-cpu`` properties (``+feat``/``-feat`` last).

        :raise QemuError: unknown model, unknown property or a bad value, with QEMU's text.
        """
        check_model(spec.model)
        cpu = cls(spec.model, accel)
        cpu._apply_model_defaults()
        for key, val in spec.props:
            cpu.set_property(key, val, via_global=True)
        for key in spec.plus:
            cpu.set_property(key, "on", via_global=False)
        for key in spec.minus:
            cpu.set_property(key, "off", via_global=False)
        props = _qemu_props()
        explicit = {n for n, (w, m) in props.items() if cpu.user_features[w] & m == m}
        cpu.requested_vmx = [n for n in cpu.vmx_features() if cpu.cpuid["vmx"] or n in explicit]
        return cpu

    def _apply_model_defaults(self) -> None:
        if self.model == "qemu64":
            self.cpuid["lm"] = True
            return
        if self.model in BUILTIN_MODELS:
            return
        feats = load_model_features(self.model)
        props = _qemu_props()
        self.model_features = frozenset(f for f in feats if f in props)
        for name in feats:
            if name in props:
                word, mask = props[name]
                self.features[word] |= mask
            else:
                self.cpuid[name] = True
        self.cpuid["lm"] = True
        for flag in CPUID_FLAGS:
            if any(g in self.model_features for g in flag.gates):
                self.cpuid[flag.name] = True

    def _not_found(self, name: str, value: str, via_global: bool) -> QemuError:
        if via_global:
            return QemuError(f"can't apply global {self.typename}.{name}={value}: "
                             f"Property '{self.typename}.{name}' not found")
        return QemuError(f"Property '{self.typename}.{name}' not found")

    def set_property(self, name: str, value: str, *, via_global: bool = True) -> None:
        """Set one QOM property as ``-cpu`` does.

        :raise QemuError: unknown property or unparsable value.
        """
        props = _qemu_props()
        name = HV_ALIASES.get(name, name)
        if name in props:
            word, mask = props[name]
            on = _parse_bool_prop(self.typename, name, value)
            self.features[word] = (self.features[word] | mask) if on else (self.features[word] & ~mask)
            self.user_features[word] |= mask
        elif name in CPUID_BY_NAME:
            self.cpuid[name] = _parse_bool_prop(self.typename, name, value)
            self.cpuid_user.add(name)
        elif name in HV_BY_PROP:
            if _parse_bool_prop(self.typename, name, value):
                self.hv.add(name)
            else:
                self.hv.discard(name)
        elif name == "hv-passthrough":
            self.hv_passthrough = _parse_bool_prop(self.typename, name, value)
        elif name == "hv-spinlocks":
            self.hv_spinlocks = _parse_uint32_prop(self.typename, name, value)
        elif name == EVMCS_REVISION_PROP:
            self.evmcs_revision = _parse_uint32_prop(self.typename, name, value)
        elif name in _SWITCH_FIELDS:
            setattr(self, _SWITCH_FIELDS[name], _parse_bool_prop(self.typename, name, value))
        elif name in _OTHER_BOOL_PROPS:
            _parse_bool_prop(self.typename, name, value)
            self.other[name] = value
        elif name in _OTHER_VALUE_PROPS:
            self.other[name] = value
        else:
            raise self._not_found(name, value, via_global)

    # ------------------------------------------------------------------ expansion
    def hyperv_enabled(self) -> bool:
        """QEMU's ``hyperv_enabled()``: KVM_CAP_HYPERV and any hv-* flag, passthrough or hv-spinlocks."""
        return self.accel.hyperv_cap() and bool(
            self.hv or self.hv_passthrough or self.hv_spinlocks != HYPERV_SPINLOCK_NEVER_NOTIFY)

    def expand(self) -> list[str]:
        """``x86_cpu_expand_features``: max features, dependencies, Hyper-V (system ioctl) checks.

        :return: warning lines (dependency warnings, printed regardless of ``check``).
        :raise QemuError: a Hyper-V enlightenment is unsupported or lacks a dependency.
        """
        warnings: list[str] = []
        if self.max_features:
            for w in VMX_WORDS:
                self.features[w] |= self.accel.supported_word(w, self.migratable) & ~self.user_features[w]
            for flag in CPUID_FLAGS:
                if flag.name not in self.cpuid_user and self.accel.cpuid_supported(flag.name):
                    self.cpuid[flag.name] = True
        warnings += self._apply_dependencies()
        if isinstance(self.accel, KvmAccel) and self.hyperv_enabled():
            leaves = self.accel.sys_hv_cpuid()
            if leaves is not None:
                self.hyperv_expand(leaves)
        self.expanded = True
        return warnings

    def _dependencies(self) -> list[tuple[tuple[str, str], tuple[str, int]]]:
        """``feature_dependencies[]`` (VMX part), in QEMU's order: ((kind, name), (word, mask))."""
        props = _qemu_props()
        deps: list[tuple[tuple[str, str], tuple[str, int]]] = []
        for w in ("procbased", "pinbased", "exit", "entry", "misc", "basic"):
            deps.append((("cpuid", "vmx"), (w, ~0)))
        deps.append((("cpuid", "lm"), props["vmx-entry-ia32e-mode"]))
        deps.append((("vmx", "vmx-secondary-ctls"), ("secondary", ~0)))
        for flag in ("xsaves", "rdrand", "invpcid", "mpx", "rdseed", "rdtscp"):
            for g in CPUID_BY_NAME[flag].gates:
                if g != "vmx-entry-ia32e-mode":
                    deps.append((("cpuid", flag), props[g]))
        deps.append((("vmx", "vmx-ept"), ("ept_vpid", MASK32)))
        deps.append((("vmx", "vmx-ept"), props["vmx-unrestricted-guest"]))
        deps.append((("vmx", "vmx-vpid"), ("ept_vpid", MASK32 << 32)))
        deps.append((("vmx", "vmx-vmfunc"), ("vmfunc", ~0)))
        for g in CPUID_BY_NAME["waitpkg"].gates:
            deps.append((("cpuid", "waitpkg"), props[g]))
        return deps

    def _has(self, kind: str, name: str) -> bool:
        if kind == "cpuid":
            return self.cpuid[name]
        word, mask = _qemu_props()[name]
        return bool(self.features[word] & mask)

    def _apply_dependencies(self) -> list[str]:
        warnings: list[str] = []
        for (kind, name), (word, mask) in self._dependencies():
            if self._has(kind, name):
                continue
            unavailable = self.features[word] & mask
            warnings += self._mark_unavailable(word, unavailable & self.user_features[word],
                                               "This feature depends on other features that were not requested")
            self.user_features[word] |= unavailable
            self.features[word] &= ~unavailable
            self.dep_dropped[word] |= unavailable
        return warnings

    def _mark_unavailable(self, word: str, mask: int, prefix: str | None) -> list[str]:
        """``mark_unavailable_features``: drop, record as filtered, warn per bit if ``prefix``."""
        if not mask:
            return []
        if not self.force_features:
            self.features[word] &= ~mask
        self.filtered[word] |= mask
        if prefix is None:
            return []
        desc = feature_word_description(word)
        return [f"{PROG}: warning: {prefix}: {desc}{'.' + n if n else ''} [bit {b}]"
                for b, n in _bit_names(word, mask, registry())]

    def hv_supported(self, feat: HvFeature, leaves: Mapping[int, Mapping[str, int]]) -> bool:
        """``hyperv_feature_supported``: eVMCS-related bits from KVM's HV CPUID, the rest by kernel support."""
        if not self.accel.hyperv_cap():
            return False
        accel = self.accel
        if isinstance(accel, KvmAccel):
            return hv_feature_supported(feat, leaves,
                                        lambda since: accel.kvm.version_at_least(getattr(accel.kvm.facts, since)))
        return hv_feature_supported(feat, leaves, lambda since: True)

    def hyperv_expand(self, leaves: Mapping[int, Mapping[str, int]]) -> None:
        """``kvm_hyperv_expand_features`` after KVM's HV CPUID is known.

        :raise QemuError: ``Hyper-V %s is not supported by kernel`` / ``Hyper-V %s requires Hyper-V %s``.
        """
        if self.hv_passthrough:
            for feat in HV_FEATURES:
                if not feat.skip_passthrough and self.hv_supported(feat, leaves):
                    self.hv.add(feat.prop)
            return
        for feat in HV_FEATURES:
            if feat.prop not in self.hv:
                continue
            if not self.hv_supported(feat, leaves):
                raise QemuError(f"Hyper-V {feat.desc} is not supported by kernel",
                                stage="evmcs-cap" if feat.prop == "hv-evmcs" else "hv-feature")
            for dep in feat.deps:
                if dep not in self.hv:
                    raise QemuError(f"Hyper-V {feat.desc} requires Hyper-V {HV_BY_PROP[dep].desc}")
        if "hv-synic" in self.hv and self.other.get("x-hv-synic-kvm-only") not in BOOL_TRUE \
                and "hv-vpindex" not in self.hv:
            raise QemuError(f"Hyper-V {HV_BY_PROP['hv-synic'].desc} requires Hyper-V {HV_BY_PROP['hv-vpindex'].desc}")

    # ------------------------------------------------------------------ filtering
    def filter(self) -> list[str]:
        """``x86_cpu_filter_features``; then the ``enforce`` check of realize.

        :return: warning lines (only when ``check`` or ``enforce``); see :meth:`enforce_error`.
        """
        verbose = self.check or self.enforce
        who = "host" if self.accel.uses_host_cpuid else "TCG"
        prefix = f"{who} doesn't support requested feature" if verbose else None
        warnings: list[str] = []
        for flag in CPUID_FLAGS:
            if self.cpuid[flag.name] and not self.accel.cpuid_supported(flag.name):
                if not self.force_features:
                    self.cpuid[flag.name] = False
                self.cpuid_filtered.append(flag.name)
                if prefix:
                    warnings.append(f"{PROG}: warning: {prefix}: {flag.desc}.{flag.name} [bit {flag.bit}]")
        for w in VMX_WORDS:
            unavailable = self.features[w] & ~self.accel.supported_word(w, False)
            self.host_filtered[w] |= unavailable
            warnings += self._mark_unavailable(w, unavailable, prefix)
        return warnings

    def enforce_error(self) -> QemuError | None:
        """The realize-time ``enforce`` failure, if any (checked after :meth:`filter` printed its warnings)."""
        if self.enforce and self.has_filtered():
            who = "Host" if self.accel.uses_host_cpuid else "TCG"
            return QemuError(f"{who} doesn't support requested features")
        return None

    def has_filtered(self) -> bool:
        """``x86_cpu_have_filtered_features``."""
        return bool(self.cpuid_filtered) or any(self.filtered.values())

    def unavailable_features(self) -> list[str]:
        """QOM ``unavailable-features``: names of filtered features (deduplicated, QEMU order)."""
        out: list[str] = list(self.cpuid_filtered)
        reg = registry()
        for w in VMX_WORDS:
            for _, name in _bit_names(w, self.filtered[w], reg):
                if name and name not in out:
                    out.append(name)
        return out

    # ------------------------------------------------------------------ queries
    def has_vmx(self) -> bool:
        """``cpu_has_vmx``: CPUID.01H:ECX.VMX is set."""
        return self.cpuid["vmx"]

    def prop_bool(self, name: str) -> bool | None:
        """A boolean feature property (``vmx-*``, CPUID flags, ``hv-*``), ``None`` if not one."""
        props = _qemu_props()
        name = HV_ALIASES.get(name, name)
        if name in props:
            word, mask = props[name]
            return (self.features[word] & mask) == mask
        if name in CPUID_BY_NAME:
            return self.cpuid[name]
        if name in HV_BY_PROP:
            return name in self.hv
        if name == "hv-passthrough":
            return self.hv_passthrough
        if name == "check":
            return self.check
        if name == "enforce":
            return self.enforce
        if name == "migratable":
            return self.migratable
        return None

    def static_props(self) -> dict[str, object]:
        """Feature booleans of a ``static`` expansion: every modelled CPUID flag and every ``vmx-*`` name."""
        out: dict[str, object] = {f.name: self.cpuid[f.name] for f in CPUID_FLAGS}
        for name in vmx_prop_names():
            out[name] = bool(self.prop_bool(name))
        return out

    def full_props(self) -> dict[str, object]:
        """``full`` expansion: the static set plus hv-* and the other properties."""
        out = self.static_props()
        for feat in HV_FEATURES:
            out[feat.prop] = feat.prop in self.hv
        out["hv-passthrough"] = self.hv_passthrough
        out["hv-spinlocks"] = self.hv_spinlocks
        if self.evmcs_revision is not None:
            out[EVMCS_REVISION_PROP] = self.evmcs_revision
        out["check"] = self.check
        out["enforce"] = self.enforce
        out["migratable"] = self.migratable
        for k, v in self.other.items():
            out[k] = v
        return out

    def vmx_features(self) -> list[str]:
        """QEMU names of every ``vmx-*`` property currently on."""
        return [n for n in vmx_prop_names() if self.prop_bool(n)]

    # ------------------------------------------------------------------ what QEMU hands to KVM
    def hv_leaves(self) -> dict[int, dict[str, int]]:
        """``hyperv_fill_cpuids``: the guest's Hyper-V CPUID leaves (only the modelled registers)."""
        regs: dict[int, dict[str, int]] = {
            leaf: {"eax": 0, "ebx": 0, "ecx": 0, "edx": 0}
            for leaf in (HV_CPUID_VENDOR_AND_MAX_FUNCTIONS, HV_CPUID_FEATURES, HV_CPUID_ENLIGHTMENT_INFO,
                         HV_CPUID_NESTED_FEATURES)}
        for feat in HV_FEATURES:
            if feat.prop in self.hv:
                for leaf, reg, mask in feat.cpuid:
                    regs[leaf][reg] |= mask
        regs[HV_CPUID_FEATURES]["eax"] |= HV_HYPERCALL_AVAILABLE
        regs[HV_CPUID_FEATURES]["edx"] |= HV_CPU_DYNAMIC_PARTITIONING_AVAILABLE
        if "hv-vapic" in self.hv and "hv-avic" not in self.hv:
            regs[HV_CPUID_ENLIGHTMENT_INFO]["eax"] |= HV_APIC_ACCESS_RECOMMENDED
        regs[HV_CPUID_ENLIGHTMENT_INFO]["ebx"] = self.hv_spinlocks
        nested = regs[HV_CPUID_NESTED_FEATURES]
        if "hv-evmcs" in self.hv:
            nested["eax"] |= DEFAULT_EVMCS_VERSION
        if nested["eax"]:
            regs[HV_CPUID_VENDOR_AND_MAX_FUNCTIONS]["eax"] = HV_CPUID_NESTED_FEATURES
        else:
            # QEMU emits leaf 0x4000000A (EAX only, plus the plug-in's EBX) only when nested EAX != 0.
            nested["ebx"] = 0
            regs[HV_CPUID_VENDOR_AND_MAX_FUNCTIONS]["eax"] = HV_CPUID_IMPLEMENT_LIMITS
        return regs

    def vmx_msr_entries(self, host_msrs: Mapping[str, int]) -> list[tuple[str, int]]:
        """``kvm_msr_entry_add_vmx``: the VMX MSRs QEMU writes, in QEMU's order.

        :param host_msrs: KVM's feature MSRs (system fd); empty means nested is off and nothing is written.

        Simulation assumption: an MSR the host profile does not record (a synthetic what-if host without
        CR0_FIXED0) is not written -- real KVM lists every one of them, and the profile cannot say what
        it would accept.
        """
        if not host_msrs.get("IA32_VMX_BASIC", 0):
            return []
        return [(msr, value) for msr, value in compose_vmx_msrs(self.features, host_msrs, lm=self.cpuid["lm"])
                if msr in host_msrs]


def feature_names(word_masks: Mapping[str, int]) -> list[str]:
    """QEMU names of the named bits in ``{word: mask}`` (deduplicated, word order)."""
    props = _qemu_props()
    out: list[str] = []
    for name in vmx_prop_names():      # each name once already (the keys of _qemu_props)
        word, mask = props[name]
        if word_masks.get(word, 0) & mask == mask:
            out.append(name)
    return out


#: For tests and docs: the callable type of a functional provider.
ModelFunction = Callable[[str], AbstractSet[str] | None]


class FunctionProvider:
    """Adapt a ``name -> Optional[set]`` function (and a list of names) to :class:`ModelProvider`."""

    def __init__(self, fn: ModelFunction, names: Sequence[str] = ()) -> None:
        self._fn = fn
        self._names = list(names)

    def features(self, name: str) -> AbstractSet[str] | None:
        """Delegate to the function."""
        return self._fn(name)

    def names(self) -> Sequence[str]:
        """The names given at construction."""
        return list(self._names)
