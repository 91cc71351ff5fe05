"""SHA-256 of a short text, without loading OpenSSL where Python has its own SHA-256.

Why: ``hashlib`` loads OpenSSL's libcrypto before it hands out a SHA-256: about 10 million instructions,
a quarter of a bare interpreter's start, for the few hundred bytes of a host fingerprint
(:meth:`~qemu_evmcs.core.profile.HostProfile.fingerprint`), which every command over several hosts
computes. CPython ships its own SHA-256 (module ``_sha256`` up to 3.11, ``_sha2`` from 3.12; hashlib
falls back to it itself): SHA-256 is one algorithm, so the digests are the same (``tests/test_digest.py``
compares both on the same inputs). A Python built without it gets hashlib's.

Bulk data keeps hashlib: OpenSSL's SHA-256 is several times faster per byte, which is what counts for the
fingerprint of a fleet file of hundreds of megabytes (``fleet/inventory.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from qemu_evmcs.core import lazy
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

#: The SHA-256 constructor in use, found at the first digest.
_sha256: Callable[[bytes], Any] | None = None


def _constructor() -> Callable[[bytes], Any]:
    global _sha256
    if _sha256 is None:
        try:
            _sha256 = lazy.module("_sha2").sha256            # CPython 3.12 and later
        except ImportError:
            try:
                _sha256 = lazy.module("_sha256").sha256      # CPython up to 3.11
            except ImportError:
                _sha256 = lazy.module("hashlib").sha256      # built without them: OpenSSL's
    return _sha256


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data``, as 64 lowercase hexadecimal digits."""
    return str(_constructor()(data).hexdigest())


__all__ = ["sha256_hex"]
