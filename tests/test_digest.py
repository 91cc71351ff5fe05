"""``core/digest.py`` gives hashlib's SHA-256 (OpenSSL's, an independent implementation) on every input."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from qemu_evmcs.core import digest


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
