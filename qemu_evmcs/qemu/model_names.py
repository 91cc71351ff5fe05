"""``--model NAME`` as users write it: ``host``, ``max``, any QEMU model, alias or version, any libvirt
``cpu_map`` name, a definition file or a bundled definition, optionally followed by ``-cpu`` items.

Why: field reports and guides start eVMCS guests with ``-cpu host,hv-passthrough`` or ``-cpu
Skylake-Client-v4,hv-evmcs,...``, or with the model their libvirt domain names; before this, ``--model`` took
only the bundled definitions, a file or ``max``.

Resolution order (the first that matches):

1. ``host`` / ``max``: QEMU's built-in models (:data:`BUILTIN`); their feature set depends on the host, so
   the policy layer builds them per host (:mod:`qemu_evmcs.policy.hostmodel`).
2. A definition file, or a bundled/``$QEMU_EVMCS_CPU_MODELS`` definition name (``Skylake-Server-evmcs``).
3. A model of the QEMU snapshot (every version and alias: ``Skylake-Client-v4``, ``Cascadelake-Server``,
   ``Icelake-Server-noTSX``). libvirt's ``cpu_map`` names are QEMU's unversioned names and aliases, which
   libvirt passes to QEMU as they are (``-cpu Skylake-Server-noTSX-IBRS``), so a libvirt name is the QEMU
   model of that name. A libvirt-only name (``cpu64-rhel6``) is refused with that reason.

A QEMU model used this way is what ``-cpu MODEL,vmx=on,hv-vapic=on,hv-evmcs=on`` gives: the model's own
features and default vmx-* set with ``vmx`` on, and the two Hyper-V flags eVMCS needs (QEMU:
hv-evmcs requires hv-vapic). Items after the name (``Skylake-Client-v4,hv-passthrough,-vmx-pml``) adjust
that, with QEMU's precedence: ``key=value`` and bare names first, then every ``+feat``, then every ``-feat``
(``x86_cpu_parse_featurestr``).

Unknown names get a suggestion from every one of these sources.
"""

from __future__ import annotations

import os

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import EvmcsError, InputError
from qemu_evmcs.qemu.cpuspec import parse_cpu
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from qemu_evmcs.qemu.models import ModelDef, load_model, load_snapshot, model_files, resolve_model_path

if TYPE_CHECKING:
    from qemu_evmcs.qemu import libvirt_cpumap
else:   # only for a name QEMU does not know (a libvirt-only model, a typo's suggestions): core/lazy.py
    libvirt_cpumap = lazy.proxy("qemu_evmcs.qemu.libvirt_cpumap")

#: QEMU's built-in models that take the host's features.
BUILTIN = ("host", "max")
#: ``negotiate --model auto``: no model of its own but the newest QEMU model every host of the pool can run, which
#: only the negotiator can pick (policy/negotiate.py ``auto_model``). Named here, with the other ``--model``
#: spellings, so that every other command says so instead of "unknown CPU model 'auto' (did you mean athlon?)".
AUTO_MODEL = "auto"
#: ``--model`` help text, one for every command.
MODEL_HELP = ("CPU model: host or max (optionally with -cpu items, e.g. host,hv-passthrough), a QEMU model, alias or "
              "version (Skylake-Client-v4), a libvirt cpu_map name, a definition name (Skylake-Server-evmcs) or "
              "definition file")
#: What a bare QEMU model name gets besides its own features: VMX and the flags eVMCS needs.
EVMCS_MINIMUM_HYPERV = {"hv-vapic": True, "hv-evmcs": True}


def split_model_arg(text: str) -> tuple[str, dict[str, bool]]:
    """``NAME[,item...]`` -> (NAME, boolean items with QEMU's precedence), read by the one ``-cpu`` parser
    (:func:`qemu_evmcs.qemu.cpuspec.parse_cpu`).

    :raise InputError: an empty name, or a non-boolean ``key=value`` (a model takes booleans only).
    """
    try:
        spec = parse_cpu(text)
    except EvmcsError as err:
        raise InputError(f"--model {text!r}: {err.message}") from None
    if not spec.model.strip():
        raise InputError(f"--model {text!r}: empty model name")
    if spec.value_props:
        key, value = next(iter(spec.value_props.items()))
        raise InputError(f"--model {text!r}: {key}={value} is not a boolean CPU option (feature=on|off, +feature, "
                         f"-feature)")
    return spec.model.strip(), dict(spec.features)


def is_definition(name: str) -> bool:
    """A definition file or a definition name (bundled or ``$QEMU_EVMCS_CPU_MODELS``)?"""
    if os.path.isfile(name):
        return True
    try:
        resolve_model_path(name)
    except InputError:
        return False
    return True


def all_model_names() -> list[str]:
    """Every name ``--model`` accepts (for suggestions and listings)."""
    names = set(BUILTIN)
    names.update(os.path.splitext(os.path.basename(p))[0] for p in model_files())
    names.update(load_snapshot().names())
    names.update(libvirt_cpumap.load_cpu_map().models)
    return sorted(names)


def unknown_model_error(name: str) -> InputError:
    """``unknown CPU model 'X' (did you mean Y?)`` with a suggestion from every source."""
    if name == AUTO_MODEL:
        return InputError("--model auto: only negotiate picks a model (the newest QEMU model every host can run); "
                          "run `qemu-evmcs negotiate --model auto --hosts ...` and give the model it names here")
    names = all_model_names()
    lower = {n.lower(): n for n in names}
    close = lazy.module("difflib").get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(lower[c] for c in close)}? " if close else ""
    return InputError(f"unknown CPU model {name!r} ({hint}--model takes host, max, a QEMU model such as "
                      f"Skylake-Client-v4, a libvirt cpu_map name, a definition name such as Skylake-Server-evmcs, "
                      f"or a definition file)")


def qemu_model_def(name: str, items: dict[str, bool] | None = None) -> ModelDef:
    """The definition equivalent to ``-cpu NAME,vmx=on,hv-vapic=on,hv-evmcs=on[,items]`` (see the module docstring).

    :raise InputError: neither QEMU nor libvirt knows ``name``, or it is a libvirt-only model.
    """
    snap = load_snapshot()
    if not snap.has(name):
        if name in libvirt_cpumap.load_cpu_map().models:
            raise InputError(f"libvirt CPU model {name!r} has no QEMU {snap.version} model of that name "
                             f"(libvirt would refuse to start it with this QEMU)")
        raise unknown_model_error(name)
    model = snap.get(name)
    features: dict[str, bool] = {"vmx": True}
    hyperv: dict[str, bool] = dict(EVMCS_MINIMUM_HYPERV)
    for key, on in (items or {}).items():
        (hyperv if key.startswith("hv-") else features)[key] = on
    return ModelDef(name=name if not items else f"{name},{','.join(_item(k, v) for k, v in items.items())}",
                    description=f"QEMU {snap.version} model {name} with VMX and eVMCS",
                    base=name, vendor=model.vendor or "GenuineIntel", features=features, hyperv=hyperv,
                    evmcs_version=None, pv_perf_global_ctrl="auto", added={}, removed={})


def _item(key: str, on: bool) -> str:
    return f"{key}={'on' if on else 'off'}"


def load_any_model(text: str) -> ModelDef:
    """A :class:`ModelDef` for anything but ``host``/``max`` (see the module docstring).

    :raise InputError: unknown name (with suggestions), or a bad definition file.
    """
    if is_definition(text):
        return load_model(text)
    name, items = split_model_arg(text)
    if name in BUILTIN:
        raise InputError(f"--model {name}: QEMU's {name} model depends on the host (handled by the policy layer)")
    if is_definition(name):
        if items:
            raise InputError(f"--model {text!r}: options after a definition name; put them in the definition")
        return load_model(name)
    if os.sep in name or name.endswith((".yaml", ".yml")):
        return load_model(name)   # a missing file: load_model words the error with the file name
    return qemu_model_def(name, items)
