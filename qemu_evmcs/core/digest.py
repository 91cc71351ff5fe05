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


def canonical_json(value: object) -> str:
    """``json.dumps(value, sort_keys=True)`` for the plain data a fingerprint key holds, without ``json``.

    Why: a host fingerprint hashes this text, and importing ``json`` (with the regular expressions it
    compiles) cost a command over several hosts about 6 million instructions for it. The text must stay
    json's to the byte (fingerprints are stored in inventories), so only what json writes unescaped is
    written here: ``None``, booleans, integers, strings of printable ASCII without ``"`` or ``\\``, lists,
    tuples and dicts with such string keys. Anything else -- a float, an escaped or non-ASCII character --
    is json's own text (``tests/test_digest.py`` compares both on every bundled profile's key).
    """
    text = _plain(value)
    return text if text is not None else str(lazy.module("json").dumps(value, sort_keys=True))


def _plain(value: object) -> str | None:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    t = type(value)
    if t is int:
        return int.__repr__(value)
    if t is str:
        text: str = value  # type: ignore[assignment]
        if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
            return f'"{text}"'
        return None
    if t is list or t is tuple:
        parts = [_plain(v) for v in value]  # type: ignore[attr-defined]
        return None if None in parts else "[" + ", ".join(parts) + "]"  # type: ignore[arg-type]
    if t is dict:
        items = value.items()  # type: ignore[attr-defined]
        if not all(type(k) is str for k, _ in items):
            return None
        out = []
        for k, v in sorted(items):
            kt, vt = _plain(k), _plain(v)
            if kt is None or vt is None:
                return None
            out.append(f"{kt}: {vt}")
        return "{" + ", ".join(out) + "}"
    return None


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data``, as 64 lowercase hexadecimal digits."""
    return str(_constructor()(data).hexdigest())


__all__ = ["canonical_json", "sha256_hex"]
