"""``--check`` with a real emulator: ask that binary which CPU models and properties it has.

Why: the simulated start-up knows QEMU 7.2's models and this project's options, not the binary the user
runs. A ``-cpu`` naming a model or property that binary lacks is refused by QEMU at start
(``unable to find CPU model 'X'``; ``can't apply global max-x86_64-cpu.hv-evmcs-perf-global-ctrl=on: Property
'max-x86_64-cpu.hv-evmcs-perf-global-ctrl' not found``); ``--check`` must say so first, in QEMU's words, and
start nothing. So the wrapper starts the binary once with ``-machine none`` (no guest, no accelerator
needed) and asks over QMP:

- ``query-cpu-definitions``: the models (aliases included) and each one's QOM type name;
- ``qom-list-properties`` of that type: every property ``-cpu`` may set (``vmx-*``, ``hv-*``, ``enforce``...).

The wording of both refusals is QEMU 7.2's command-line text (measured: ``qemu-system-x86_64 -machine none
-cpu Nope`` and ``-cpu max,hv-evmcs-perf-global-ctrl=on``); QEMU's own messages, so the user can search for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.launch.qmp import EmulatorSession
from qemu_evmcs.qemu.cpuspec import CpuSpec

#: How the binary is started for the questions: no machine, no devices, no display.
PROBE_ARGS: tuple[str, ...] = ("-machine", "none", "-nodefaults", "-display", "none")


@dataclass
class CpuCapabilities:
    """What one emulator binary offers for ``-cpu``.

    :ivar models: model name -> QOM type name (``Skylake-Server-v5`` -> ``Skylake-Server-v5-x86_64-cpu``).
    :ivar properties: QOM type name -> its property names (filled for the types asked about).
    :ivar version: the binary's QEMU version (``7.2.22``) from the QMP greeting, when it gives one.
    """

    models: dict[str, str] = field(default_factory=dict)
    properties: dict[str, frozenset[str]] = field(default_factory=dict)
    version: str | None = None


async def probe_cpu_capabilities(binary: str, models: Sequence[str] = (), *, qmp_timeout: float = 10.0,
                                 runtime_dir: str | None = None) -> CpuCapabilities:
    """Start ``binary -machine none`` with a private QMP socket; list its models and the properties of
    ``models``' types. Always stops the binary again.

    :raise LaunchError: the binary does not start or does not answer.
    """
    caps = CpuCapabilities()
    async with EmulatorSession([binary, *PROBE_ARGS], qmp_timeout=qmp_timeout, runtime_dir=runtime_dir,
                               name="qemu-evmcs-check") as session:
        version = await session.execute("query-version")
        if isinstance(version, dict) and isinstance(version.get("qemu"), dict):
            v = version["qemu"]
            caps.version = f"{v.get('major')}.{v.get('minor')}.{v.get('micro')}"
        defs = await session.execute("query-cpu-definitions")
        if not isinstance(defs, list):
            raise LaunchError(f"query-cpu-definitions returned {defs!r}", layer="qemu")
        for d in defs:
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                caps.models[d["name"]] = str(d.get("typename") or f"{d['name']}-x86_64-cpu")
        for model in models:
            typename = caps.models.get(model)
            if typename is None or typename in caps.properties:
                continue
            props = await session.execute("qom-list-properties", {"typename": typename})
            if not isinstance(props, list):
                raise LaunchError(f"qom-list-properties {typename} returned {props!r}", layer="qemu")
            caps.properties[typename] = frozenset(str(p["name"]) for p in props
                                                  if isinstance(p, dict) and "name" in p)
    return caps


def cpu_refusals(spec: CpuSpec, caps: CpuCapabilities) -> list[str]:
    """QEMU's refusals of ``spec`` by this binary, in QEMU's words (empty: it has the model and every property).

    QEMU stops at the first; all are listed so that one run shows everything to fix.
    """
    typename = caps.models.get(spec.model)
    if typename is None:
        return [f"unable to find CPU model '{spec.model}'"]
    known = caps.properties.get(typename, frozenset())
    out = []
    items = [(k, "on" if v else "off") for k, v in spec.features.items()] + list(spec.value_props.items())
    for key, value in items:
        if key not in known:
            out.append(f"can't apply global {typename}.{key}={value}: Property '{typename}.{key}' not found")
    return out
