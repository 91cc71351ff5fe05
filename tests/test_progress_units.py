"""Progress is measured in the unit that moves (issue 17): bytes for an import, host pairs for designs.

A single 2-host file used to show "100% 1" (one file) at once and then nothing while it was parsed; now the
bar's total is the file's size in bytes and the loader advances it as it reads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile
from qemu_evmcs.fleet import inventory
from qemu_evmcs.fleet.inventory import FleetDb
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.policy.designs import compare_designs


class _Spy(Progress):
    made: list[_Spy] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _Spy.made.append(self)


def test_import_progress_counts_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = Path(bundled_profile_dir(), "skylake-6.3.yaml").read_text(encoding="utf-8")
    docs = [text.replace("name: skylake-6.3\n", f"name: h{i}\n", 1) for i in range(2)]
    big = tmp_path / "fleet.yaml"
    big.write_text("---\n".join(docs), encoding="utf-8")
    _Spy.made.clear()
    monkeypatch.setattr(inventory, "Progress", _Spy)
    with FleetDb(str(tmp_path / "f.db"), create=True) as db:
        db.import_paths([str(big)], progress=True)
    (bar,) = _Spy.made
    size = os.path.getsize(big)
    assert (bar.unit, bar.total) == ("B", size)
    assert bar.done == size


def test_design_progress_counts_host_pairs() -> None:
    a = load_profile(os.path.join(bundled_profile_dir(), "skylake-6.3.yaml"))
    b = load_profile(os.path.join(bundled_profile_dir(), "icelake-6.1.yaml"))
    fleet = Fleet.of([a, b])
    fleet.add(a, "second-skylake")                    # 3 hosts in 2 groups: 3 x 3 = 9 ordered host pairs
    seen: dict[str, int] = {"total": 0, "done": 0}

    class Bar:
        def update(self, amount: int = 1) -> None:
            seen["done"] += amount

    @contextlib.contextmanager
    def factory(total: int, label: str) -> Iterator[Bar]:
        seen["total"] = total
        yield Bar()

    compare_designs(fleet, progress=factory)
    assert seen == {"total": 9, "done": 9}
