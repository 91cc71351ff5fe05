"""The CPU generation of a host ("Skylake", "Ice Lake"), from ``data/cpu_generations.yaml``.

Why: an operator recognises a host group by its CPU generation and kernel, not by an opaque group number
or a 48-character model name; the model-number table is Linux's ``intel-family.h``, kept as data.
"""

from __future__ import annotations

from functools import lru_cache
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.profile import HostProfile
from qemu_evmcs.core.registry import load_data

if TYPE_CHECKING:
    from typing import Any


@lru_cache(maxsize=1)
def _table() -> tuple[int, dict[int, str], dict[int, list[tuple[int, str]]]]:
    data: Any = load_data("cpu_generations.yaml")
    steppings = {int(m): sorted((int(s), str(n)) for s, n in by.items()) for m, by in data["steppings"].items()}
    return int(data["family"]), {int(k): str(v) for k, v in data["models"].items()}, steppings


def generation(profile: HostProfile) -> str | None:
    """The generation name, or None when the profile has no family/model or the model is not in the table."""
    family, models, steppings = _table()
    if profile.vendor != "GenuineIntel" or profile.family != family or profile.model is None:
        return None
    by_step = steppings.get(profile.model)
    if by_step and profile.stepping is not None:
        name = by_step[0][1]
        for first, n in by_step:
            if profile.stepping >= first:
                name = n
        return name
    return models.get(profile.model)
