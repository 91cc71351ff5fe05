"""One spelling of "this test needs X from the machine": skip where X is missing, FAIL in CI.

``.ci/run`` exports ``CI=true`` (as do most CI services); there QEMU, Chromium and libvirt are installed on
purpose, so their absence is a broken CI machine, not a reason to skip. Every marker's helper
(``launch_helpers.qemu_path``, the browser and QEMU-snapshot tests, ``libvirt_helpers``) goes through
:func:`unavailable`, so the rule and the spelling of the variable live here once.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``true``, ``1``, ``yes``; any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; with CI=true fail instead (the test must run there)."""
    if in_ci():
        pytest.fail(f"CI=true, and {reason}: this test must run in CI")
    pytest.skip(reason)


def need_program(name: str, install: str) -> str:
    """The path of program ``name`` (on PATH, or an absolute path); else :func:`unavailable`, saying how to
    ``install`` it."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed ({install})")
    return path
