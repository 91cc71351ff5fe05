"""QEMU snapshot, model definitions and the loader (qemu_evmcs.qemu.models)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.qemu.models import (
    effective_model,
    load_model,
    load_model_features,
    load_snapshot,
    model_files,
    model_release,
    package_models_dir,
    qemu_props_to_features,
    resolve_feature_name,
)
from qemu_evmcs.core.registry import registry
from qemu_evmcs.policy.validate import era_visibility, validate_paths

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ["Cascadelake-Server-evmcs", "Icelake-Server-evmcs", "SapphireRapids-evmcs", "Skylake-Server-evmcs"]


def test_snapshot_has_intel_server_models_and_versions() -> None:
    snap = load_snapshot()
    assert snap.version == "7.2"
    for name in ("Skylake-Server-v5", "Cascadelake-Server-v5", "Icelake-Server-v6", "Skylake-Server"):
        assert snap.has(name)
    assert not snap.has("SapphireRapids-v1")
    alias = snap.get("Skylake-Server")
    assert alias.alias_of == "Skylake-Server-v1"
    assert snap.get("Skylake-Server-v5").migration_safe is True
    assert "vmx" in snap.all_features and "vmx-ept" in snap.all_features


def test_named_model_vmx_defaults_match_qemu_md() -> None:
    """qemu.md §2.4: v4 adds eptp-switching, v5 adds vmx-xsaves; Icelake-Server v6 adds page-walk-5."""
    v1 = load_model_features("Skylake-Server-v1")
    v5 = load_model_features("Skylake-Server-v5")
    assert "vmx-eptp-switching" not in v1 and "vmx-eptp-switching" in v5
    assert "vmx-xsaves" in v5 and "vmx-xsaves" not in v1
    assert "vmx-page-walk-5" in load_model_features("Icelake-Server-v6")
    assert "vmx-page-walk-5" not in load_model_features("Icelake-Server-v5")
    assert "vmx-pml" not in load_model_features("Icelake-Server-v1")
    for never in ("vmx-ple", "vmx-tsc-scaling", "vmx-encls-exit"):
        assert never not in v5
    # QEMU's misspelt vmx-invept-single-context covers the INVVPID single-context bit too.
    assert {"vmx-invept-single-context", "vmx-invvpid-single-context"} <= v5


def test_load_model_features_unknown_uses_qemu_text() -> None:
    with pytest.raises(InputError, match="unable to find CPU model 'Skylake-Servr'"):
        load_model_features("Skylake-Servr")


def test_qemu_property_mapping() -> None:
    assert qemu_props_to_features(["vmx-invept-single-context"]) == {
        "vmx-invept-single-context", "vmx-invvpid-single-context"}
    assert qemu_props_to_features(["vmx-invept-single-context-noglobals"]) == {"vmx-invvpid-single-context-noglobals"}
    snap = load_snapshot()
    assert resolve_feature_name("xsaves", snap).kind == "cpuid"
    assert resolve_feature_name("vmx-tertiary-ctls", snap).kind == "no-qemu-property"
    assert resolve_feature_name("vmx-nonsense", snap).kind == "unknown"


def test_one_copy_shipped_in_the_package() -> None:
    """Definitions and the QEMU snapshot exist once, as package data; ``cpu_models/`` is a link to it."""
    pkg = REPO / "qemu_evmcs" / "data" / "cpu_models"
    assert Path(package_models_dir()).resolve() == pkg.resolve()
    assert (REPO / "cpu_models").resolve() == pkg.resolve()
    assert (pkg / "qemu" / "7.2" / "index.json").is_file()
    assert Path(load_snapshot().directory).resolve() == (pkg / "qemu" / "7.2").resolve()
    assert {Path(p).resolve().parent for p in model_files()} == {pkg.resolve()}
    # No second snapshot or definition copy anywhere in the source tree (build output and venvs aside).

    def source(p: Path) -> bool:
        rel = p.relative_to(REPO).parts
        return not ({".git", "build", "dist", "tests"} & set(rel)) and not rel[0].startswith(".venv")

    copies = [p for p in REPO.rglob("Skylake-Server-v5.json") if source(p)]
    assert [p.resolve() for p in copies] == [pkg / "qemu" / "7.2" / "Skylake-Server-v5.json"]
    defs = [p for p in REPO.rglob("Skylake-Server-evmcs.yaml") if source(p)]
    assert {p.resolve() for p in defs} == {pkg / "Skylake-Server-evmcs.yaml"}


def test_package_data_globs_cover_the_shipped_files() -> None:
    """pyproject's package-data patterns match every shipped definition and snapshot file."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qemu_evmcs"]
    pkg = REPO / "qemu_evmcs"
    shipped = [p for p in (pkg / "data" / "cpu_models").rglob("*") if p.is_file()]
    assert len(shipped) > 100
    for p in shipped:
        rel = p.relative_to(pkg).as_posix()
        assert any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs), rel


def test_release_table() -> None:
    assert model_release("SapphireRapids-v1") == ("8.0", True)      # checked: commit 7eb061b06e, v8.0.0
    assert model_release("SapphireRapids-v2") == ("8.1", False)     # from memory
    assert model_release("Skylake-Server-v5") is None


def test_shipped_models_are_found_by_name() -> None:
    names = [os.path.splitext(os.path.basename(p))[0] for p in model_files()]
    assert names == SHIPPED
    for name in SHIPPED:
        assert load_model(name).name == name


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "SapphireRapids-evmcs"])
def test_shipped_models_hide_nothing_an_evmcs_era_filters(name: str) -> None:
    model = load_model(name)
    eff = effective_model(model)
    assert model.evmcs and model.features["vmx"] and model.evmcs_version == (1, 1)
    for era, visible in era_visibility(False):
        assert eff.vmx <= visible, f"{name} exposes {sorted(eff.vmx - visible)} hidden by era {era}"
    assert "vmx-ept" in eff.vmx and "vmx-vpid" in eff.vmx
    assert not eff.dropped_by_deps


def test_sapphire_rapids_explicitly_off_list() -> None:
    model = load_model("SapphireRapids-evmcs")
    for feat in ("vmx-posted-intr", "vmx-preemption-timer", "vmx-apicv-xapic", "vmx-apicv-register", "vmx-apicv-vid",
                 "vmx-ple", "vmx-vmfunc", "vmx-shadow-vmcs", "vmx-pml", "vmx-eptp-switching", "vmx-tsc-scaling"):
        assert model.features[feat] is False


def test_shipped_models_validate_clean() -> None:
    report = validate_paths()
    assert report.errors == 0
    warnings = [f.message for r in report.files for f in r.findings]
    assert warnings == [("base model SapphireRapids-v1 needs QEMU >= 8.0 (snapshot is 7.2); "
                        "checks against the base were skipped")]


def test_load_model_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures:\n  vmx: perhaps\n")
    with pytest.raises(InputError) as exc:
        load_model(str(bad))
    assert exc.value.line == 5 and "must be on or off" in str(exc.value)
    with pytest.raises(InputError, match="unknown model definition 'Nope'"):
        load_model("Nope")


def test_effective_model_needs_vmx_and_applies_history(tmp_path: Path) -> None:
    p = tmp_path / "m.yaml"
    p.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {}\n")
    assert effective_model(load_model(str(p))).vmx == frozenset()
    p.write_text("name: m\nbase: Skylake-Server-v5\nvendor: GenuineIntel\nfeatures: {vmx: on}\n"
                 "history: {removed: {vmx-pml: 'rev 2'}, added: {vmx-xsaves: 'rev 3'}}\n")
    eff = effective_model(load_model(str(p)))
    assert "vmx-pml" not in eff.vmx and "vmx-pml" in eff.dropped_by_model and "vmx-xsaves" in eff.vmx


# --------------------------------------------------------------------------- meta-test (virtinst test_checkprops)

def _test_corpus() -> str:
    """Text of every test file and fixture the tests use, plus the shipped model definitions."""
    parts = []
    for root in (REPO / "tests",):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".json") and "golden" not in path.parts:
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
    for path in (REPO / "cpu_models").glob("*.yaml"):
        parts.append(path.read_text(encoding="utf-8"))
    return "\n".join(parts)


def test_every_registry_feature_is_exercised_by_some_test() -> None:
    corpus = _test_corpus()
    missing = [name for name in registry().features
               if not re.search(r"(?<![A-Za-z0-9-])" + re.escape(name) + r"(?![A-Za-z0-9-])", corpus)]
    assert not missing, f"registry features no test or fixture mentions: {missing}"
