"""Shared pytest configuration: the golden-file regenerate switch; a private parse cache for the run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from golden_util import compare_or_regen, regen_from_env


# The per-user parse cache (qemu_evmcs/core/parsecache.py) of this test run: in a directory of its own, so the
# tests neither read nor leave entries in the user's ~/.cache (subprocesses inherit it).
if "QEMU_EVMCS_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="qemu-evmcs-test-cache-")
    os.environ["QEMU_EVMCS_CACHE_DIR"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short private directory per test (``/tmp/t-XXXXXXXX``), replacing pytest's deep one.

    Why: a Unix socket path is limited to 107 bytes, and the wrapper, the simulator and the fake emulators bind
    sockets below the test's directory. pytest's ``/tmp/pytest-of-USER/pytest-N/<test name>/`` leaves too little
    room once pytest-xdist adds its ``popen-gwN/`` level, and the failures then look like launch bugs.
    """
    path = Path(tempfile.mkdtemp(prefix="t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with tests/golden/<name>, or rewrite it when regenerating."""
    regen = bool(request.config.getoption("--regen-golden")) or regen_from_env()

    def check(name: str, text: str) -> None:
        compare_or_regen(name, text, regen=regen)

    return check
