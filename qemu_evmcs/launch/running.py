"""Read a running QEMU's CPU configuration over standard QMP (``migrate-check --from-running``).

Why standard QMP: a real QEMU has no ``x-evmcs-*`` command (those are the simulator's); everything a
migration check needs about the *source guest's configuration* is in QOM. What the guest *sees* is not
(KVM filters VMX MSRs on guest reads only), so that is simulated from the source host profile afterwards
(:func:`qemu_evmcs.policy.migrate.config_from_running`).

Commands (all QEMU 7.2, checked against the installed binary under TCG):

- ``query-cpus-fast``: the first vCPU's ``qom-path``;
- ``qom-get PATH type``: its QOM type (``Skylake-Server-v5-x86_64-cpu``), hence the ``-cpu`` model;
- ``qom-list PATH``: its properties; then one pipelined ``qom-get`` per ``vmx``/``vmx-*``/``hv-*`` boolean, of
  ``enforce`` and of ``unavailable-features`` (requested features the accelerator filtered: with them the
  requested ``-cpu`` is rebuilt even under TCG, which filters every vmx bit);
- ``query-cpu-model-expansion`` (``full``) of the model with no properties: the model's defaults;
- ``query-kvm``;
- the simulator's ``x-evmcs-query-guest-vmx-msrs`` when it exists (its guest view and host profile).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu.qmp import ExecuteError, QMPClient

from qemu_evmcs.policy.migrate import parse_qmp_msrs
from qemu_evmcs.policy.negotiate import PERF_OPTION, REVISION_OPTION

if TYPE_CHECKING:
    from typing import Any

#: QOM type suffix of x86-64 CPU models (``max-x86_64-cpu``).
TYPE_SUFFIX = "-x86_64-cpu"
#: Non-boolean or proposed options read when the CPU has them (the simulator's).
EXTRA_PROPS = ("enforce", PERF_OPTION, REVISION_OPTION, "hv-passthrough")


@dataclass
class RunningCpu:
    """The running guest's CPU as QMP shows it.

    :ivar props: boolean ``vmx``/``vmx-*``/``hv-*`` properties as they are now (after filtering).
    :ivar unavailable: QOM ``unavailable-features`` (requested, filtered by the accelerator or host).
    :ivar model_defaults: boolean properties of the model alone (``query-cpu-model-expansion``).
    :ivar guest_msrs: the simulator's guest-visible VMX MSRs (None for a real QEMU).
    :ivar profile: the simulator's host profile (None for a real QEMU).
    """

    qom_path: str
    typename: str
    model: str
    props: dict[str, bool] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)
    model_defaults: dict[str, bool] = field(default_factory=dict)
    kvm_enabled: bool | None = None
    guest_msrs: dict[str, int] | None = None
    profile: str | None = None


def _tracked(name: str) -> bool:
    return name == "vmx" or name.startswith(("vmx-", "hv-"))


async def read_running_cpu(socket_path: str, timeout: float = 10.0) -> RunningCpu:
    """Connect to ``socket_path`` and read the first vCPU's configuration.

    :raise OSError | QMPError | asyncio.TimeoutError | ValueError: no QMP server there, it does not answer,
        or it has no CPU.
    """
    client = QMPClient("qemu-evmcs-migrate-check")
    await asyncio.wait_for(client.connect(socket_path), timeout)
    try:
        async def ex(cmd: str, args: dict[str, Any] | None = None) -> Any:
            return await asyncio.wait_for(client.execute(cmd, args), timeout)

        cpus = await ex("query-cpus-fast")
        if not isinstance(cpus, list) or not cpus:
            raise ValueError(f"query-cpus-fast returned no CPU: {cpus!r}")
        first = min(cpus, key=lambda c: int(c.get("cpu-index", 0)))
        path = str(first["qom-path"])
        typename = str(await ex("qom-get", {"path": path, "property": "type"}))
        model = typename.removesuffix(TYPE_SUFFIX)
        listed = await ex("qom-list", {"path": path})
        types = {str(p["name"]): p.get("type") for p in listed if isinstance(p, dict)}   # name -> QOM type
        bools = [n for n, t in types.items() if _tracked(n) and n not in EXTRA_PROPS and t == "bool"]
        extras = [n for n in EXTRA_PROPS if n in types]
        values = await asyncio.gather(*(ex("qom-get", {"path": path, "property": n}) for n in [*bools, *extras]))
        cpu = RunningCpu(qom_path=path, typename=typename, model=model)
        for n, v in zip([*bools, *extras], values, strict=True):
            if n in extras:
                cpu.extra[n] = v
            elif isinstance(v, bool):
                cpu.props[n] = v
        unavailable = await ex("qom-get", {"path": path, "property": "unavailable-features"})
        cpu.unavailable = [str(x) for x in unavailable] if isinstance(unavailable, list) else []
        try:
            exp = await ex("query-cpu-model-expansion", {"type": "full", "model": {"name": model}})
            props = exp.get("model", {}).get("props", {}) if isinstance(exp, dict) else {}
            cpu.model_defaults = {k: v for k, v in props.items() if isinstance(v, bool) and _tracked(k)}
        except ExecuteError:
            pass        # a model QEMU cannot expand here (host without KVM): the defaults stay unknown
        kvm = await ex("query-kvm")
        cpu.kvm_enabled = bool(kvm.get("enabled")) if isinstance(kvm, dict) else None
        try:
            ret = await ex("x-evmcs-query-guest-vmx-msrs")
        except ExecuteError:
            pass        # a real QEMU: no such command
        else:
            cpu.guest_msrs = parse_qmp_msrs(ret)
            prof = ret.get("profile") if isinstance(ret, dict) else None
            cpu.profile = prof if isinstance(prof, str) and prof else None
        return cpu
    finally:
        await client.disconnect()
