"""scripts/make-fleet: realistic, unique, deterministic fleets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from qemu_evmcs.core.profile import load_profiles

ROOT = Path(__file__).resolve().parent.parent
MAKE_FLEET = ROOT / "scripts" / "make-fleet"


def make_fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(MAKE_FLEET), *args], capture_output=True, text=True, check=False)


def test_multi_document_file_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    assert make_fleet("--count", "400", "--out", str(a), "--seed", "3").returncode == 0
    assert make_fleet("--count", "400", "--out", str(b), "--seed", "3").returncode == 0
    assert make_fleet("--count", "400", "--out", str(c), "--seed", "4").returncode == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_fleet_is_realistic_and_names_are_unique(tmp_path: Path) -> None:
    out = tmp_path / "fleet.yaml"
    r = make_fleet("--count", "3000", "--out", str(out), "--seed", "1")
    assert r.returncode == 0, r.stderr
    profiles = load_profiles([str(out)])
    assert len(profiles) == 3000
    names = [p.name for p in profiles]
    assert len(set(names)) == len(names)
    eras = {p.era.id for p in profiles}
    # Distribution kernels converge on few eras once stable backports count (kvm-evmcs.md §10.3/§10.4):
    # Ubuntu 5.15.0-91 and Debian 5.10.197 are both 5.17-6.0.
    assert len(eras) >= 3, eras
    assert {"GenuineIntel", "AuthenticAMD"} <= {p.vendor for p in profiles}
    assert any(not p.nested for p in profiles)
    assert len({p.model_name for p in profiles}) >= 4
    assert any(p.kernel.endswith("-generic") for p in profiles) and any(p.kernel.endswith("-amd64") for p in profiles)
    # Many hosts, few distinct profiles: what the fleet loader is built for.
    assert len({p.fingerprint() for p in profiles}) < 100
    manifest = json.loads((tmp_path / "fleet.yaml.manifest.json").read_text())
    assert manifest["count"] == 3000
    upgrading = [p for p in manifest["pools"].values() if p["upgrade_to"]]
    assert upgrading, "some pool must be in the middle of a kernel upgrade"
    pool = upgrading[0]
    kernels = {p.kernel for p in profiles if p.name in set(pool["hosts"])}
    assert kernels == {pool["kernel"], pool["upgrade_to"]} or len(pool["hosts"]) < 3


def test_directory_output_one_file_per_host(tmp_path: Path) -> None:
    out = tmp_path / "dir"
    assert make_fleet("--count", "40", "--out", str(out)).returncode == 0
    files = sorted(n for n in os.listdir(out) if n.endswith(".yaml"))
    assert len(files) == 40
    profiles = load_profiles([str(out)])
    assert sorted(p.name + ".yaml" for p in profiles) == files


def test_by_pool_directories(tmp_path: Path) -> None:
    out = tmp_path / "pools"
    assert make_fleet("--count", "60", "--out", str(out), "--by-pool").returncode == 0
    pools = [d for d in os.listdir(out) if (out / d).is_dir()]
    assert len(pools) >= 2
    assert sum(len(load_profiles([str(out / d)])) for d in pools) == 60


def test_bad_count_is_exit_2(tmp_path: Path) -> None:
    r = make_fleet("--count", "0", "--out", str(tmp_path / "x.yaml"))
    assert r.returncode == 2 and r.stderr.startswith("error:")


def test_existing_output_is_refused_without_force_and_replaced_whole_with_it(tmp_path: Path) -> None:
    d = tmp_path / "d"
    assert make_fleet("--count", "200", "--out", str(d)).returncode == 0
    before = sorted(os.listdir(d))
    r = make_fleet("--count", "30", "--out", str(d))
    assert r.returncode == 2 and r.stderr == f"error: {d}: already exists; pass --force to overwrite\n"
    assert sorted(os.listdir(d)) == before                       # untouched
    # --force replaces the directory as a whole: no leftover hosts of the larger fleet.
    assert make_fleet("--count", "30", "--out", str(d), "--force").returncode == 0
    assert len(load_profiles([str(d)])) == 30
    assert sorted(os.listdir(tmp_path)) == ["d"]                 # no temporary or old directory left
    f = tmp_path / "f.yaml"
    assert make_fleet("--count", "50", "--out", str(f)).returncode == 0
    first = f.read_bytes()
    r = make_fleet("--count", "20", "--out", str(f))
    assert r.returncode == 2 and "already exists; pass --force" in r.stderr and f.read_bytes() == first
    f.unlink()                                                   # the manifest alone still counts as output
    assert make_fleet("--count", "20", "--out", str(f)).returncode == 2
    assert make_fleet("--count", "20", "--out", str(f), "--force").returncode == 0
    assert len(load_profiles([str(f)])) == 20
    assert sorted(os.listdir(tmp_path)) == ["d", "f.yaml", "f.yaml.manifest.json"]
    # An existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    assert make_fleet("--count", "5", "--out", str(tmp_path / "empty")).returncode == 0


def test_real_cpus_pools_mix_generations_at_distribution_kernels(tmp_path: Path) -> None:
    out = tmp_path / "real.yaml"
    assert make_fleet("--count", "300", "--out", str(out), "--real-cpus", "--seed", "2").returncode == 0
    manifest = json.loads((tmp_path / "real.yaml.manifest.json").read_text())
    pools = manifest["pools"].values()
    assert any(len(p["cpus"]) > 1 for p in pools)          # heterogeneous pools exist
    profiles = load_profiles([str(out)])
    assert len(profiles) == 300
    models = {p.model for p in profiles}
    assert len(models) >= 3                                  # several CPU generations (family 6 models)
    assert {p.kernel.split("-")[0].rsplit(".", 1)[0] for p in profiles} <= {
        "4.19", "5.4", "5.10", "5.14", "5.15", "6.1", "6.8"}
    # Every host keeps its CPU's CPUID features and, for a partial dump, the unknown MSR (issue 12).
    assert all(p.cpu_features for p in profiles)
    assert any(p.unknown_msrs == ("IA32_VMX_VMFUNC",) for p in profiles)
