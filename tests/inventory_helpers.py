"""Inventories for the fleet-operator tests (selector, fleet plan, report): bundled profiles renamed to
operator-style host names, optionally booted on another kernel, imported per pool by the real ``fleet import``.

Why a helper: the expected host lists of those tests are written by hand from the table each test declares;
how the table becomes an inventory is the same everywhere and lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cli_helpers import Run
from qemu_evmcs.core.profile import bundled_profile_dir

#: pool -> [(bundled profile, host name, kernel release or None to keep the profile's)]
PoolTable = Mapping[str, Sequence[tuple[str, str, "str | None"]]]


def renamed_profile(bundled: str, name: str, kernel: str | None = None) -> str:
    """The bundled profile's YAML with ``name:`` replaced (and ``kernel:`` too, dropping ``kernel_version:``)."""
    text = Path(bundled_profile_dir(), f"{bundled}.yaml").read_text(encoding="utf-8")
    text = text.replace(f"name: {bundled}\n", f"name: {name}\n", 1)
    assert f"name: {name}\n" in text, bundled
    if kernel is not None:
        lines = [f'kernel: "{kernel}"' if ln.startswith("kernel:") else ln for ln in text.splitlines()]
        text = "\n".join(ln for ln in lines if not ln.startswith("kernel_version:")) + "\n"
    return text


def build_inventory(run: Run, tmp_path: Path, pools: PoolTable, db_name: str = "fleet.db") -> str:
    """Write each pool's hosts to ``tmp_path/POOL/`` and ``fleet import`` them with ``--pool POOL``."""
    db = str(tmp_path / db_name)
    for pool, hosts in pools.items():
        d = tmp_path / pool
        d.mkdir()
        for bundled, name, kernel in hosts:
            (d / f"{name}.yaml").write_text(renamed_profile(bundled, name, kernel), encoding="utf-8")
        rc, _, err = run("fleet", "import", str(d), "--db", db, "--pool", pool)
        assert rc == 0, err
    return db
