"""``scripts/sync-qemu-models``: regenerating models from the real binary reproduces the shipped snapshot."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from needs import need_program

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "sync-qemu-models"
SNAPSHOT = REPO / "qemu_evmcs" / "data" / "cpu_models" / "qemu" / "7.2"
QEMU = os.environ.get("QEMU_EVMCS_QEMU", "/usr/bin/qemu-system-x86_64")
MODELS = ["Skylake-Server-v5", "Icelake-Server-v6", "Cascadelake-Server-v5", "Skylake-Server"]


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("sync_qemu_models", str(SCRIPT))
    spec = importlib.util.spec_from_loader("sync_qemu_models", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _need_qemu() -> None:
    """In CI the binary is mandatory; elsewhere its absence skips."""
    need_program(QEMU, "apt-get install qemu-system-x86")


def test_script_is_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)


def test_model_record_is_deterministic() -> None:
    mod = _script()
    definition = {"name": "X-v1", "typename": "X-v1-x86_64-cpu", "static": False, "deprecated": False,
                  "migration-safe": True, "unavailable-features": ["ignored"]}
    exp = {"model": {"name": "base", "props": {"vmx-ept": True, "vmx-pml": False, "sse": True, "avx": False,
                                               "vendor": "GenuineIntel", "family": 6}}}
    rec = mod.model_record(definition, exp, None)
    assert rec["vmx-features"] == ["vmx-ept"] and rec["features"] == ["sse"]
    assert rec["vendor"] == "GenuineIntel" and "unavailable-features" not in rec
    assert mod.dump(rec) == mod.dump(dict(reversed(list(rec.items()))))
    err = mod.model_record({"name": "host"}, None, "CPU model 'host' requires KVM or HVF")
    assert err == {"name": "host", "expansion-error": "CPU model 'host' requires KVM or HVF"}


@pytest.mark.qemu
def test_regenerated_models_match_shipped(tmp_path: Path) -> None:
    _need_qemu()
    out = tmp_path / "snap"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--qemu", QEMU, "--out", str(out), "--models", *MODELS],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in MODELS:
        assert (out / f"{name}.json").read_text() == (SNAPSHOT / f"{name}.json").read_text(), name
    assert not (out / "index.json").exists()


@pytest.mark.qemu
def test_unknown_model_fails_with_qemu_words(tmp_path: Path) -> None:
    _need_qemu()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--qemu", QEMU, "--out", str(tmp_path), "--models", "Nope-v1"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "unable to find CPU model 'Nope-v1'" in proc.stderr


def test_missing_binary_is_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--qemu", str(tmp_path / "none"), "--out", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not an executable QEMU binary" in proc.stderr
