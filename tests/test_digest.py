"""``core/digest.py`` gives hashlib's SHA-256 (OpenSSL's, an independent implementation) on every input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from qemu_evmcs.core import digest
from qemu_evmcs.core import profile as profile_module


@pytest.mark.parametrize("data", [b"", b"abc", b"x" * 55, b"x" * 56, b"x" * 64, b"\x00\xff" * 5000,
                                  b'{"era_kernel": [6, 3], "vendor": "GenuineIntel"}'])
def test_the_same_digest_as_openssl(data: bytes) -> None:
    assert digest.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_the_fips_180_example() -> None:
    # FIPS 180-2, appendix B.1: SHA-256("abc").
    assert digest.sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_fingerprint_loads_no_openssl() -> None:
    code = ("import sys\nfrom qemu_evmcs.core.profile import load_profile, resolve_profile_path\n"
            "load_profile(resolve_profile_path('skylake-6.3')).fingerprint()\n"
            "print('_hashlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def _keys_of_bundled_profiles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The fingerprint keys of every bundled profile, captured where the profile hands them over."""
    seen: list[object] = []

    def capture(value: object) -> str:
        seen.append(value)
        return digest.canonical_json(value)

    monkeypatch.setattr(profile_module, "canonical_json", capture)
    for name in profile_module.bundled_profile_names():
        prof = profile_module.load_profile(profile_module.resolve_profile_path(name))
        prof.fingerprint()
        prof.with_kernel("5.4.0-150-generic").fingerprint()     # an ambiguous distribution build
    return seen


def test_canonical_json_is_jsons_text_for_every_bundled_profile_key(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _keys_of_bundled_profiles(monkeypatch)
    assert len(keys) >= 30
    for key in keys:
        assert digest.canonical_json(key) == json.dumps(key, sort_keys=True)


@pytest.mark.parametrize("value", [
    None, True, False, 0, -5, 2**70, "", "plain", 'quo"te', "back\\slash", "tab\there", "caf\u00e9", "\x7f",
    "\U0001f600", 1.5, float("nan"), [1, [2, (3, None)]], (), {}, {"b": 1, "a": [True, "x"]},
    {"k": {"nested": "\u00e9"}}, [1, 2.0], {"z": None, "a": {"m": (1, 2)}},
])
def test_canonical_json_is_jsons_text_for_any_value(value: object) -> None:
    assert digest.canonical_json(value) == json.dumps(value, sort_keys=True)
