"""A fresh interpreter for the start-up tests: which modules does a command import by itself?

Why ``-S``: ``site`` runs the ``.pth`` files of site-packages, and an editable install's (the README's test
install: setuptools' ``__editable__`` finder) imports ``pathlib``, and with it ``re`` and ``enum``, before any
code of this package. Those tests would then see ``re`` however the package starts. Without ``site``, the
checkout and the site-packages directories go on ``PYTHONPATH`` (PyYAML for a cache miss), which imports
nothing at start-up.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fresh_python(env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(argv prefix, environment) of a Python that imports only what it is asked to: ``os.environ`` plus
    ``env``, with ``PYTHONPATH`` the checkout, then site-packages."""
    user = [site.getusersitepackages()] if site.ENABLE_USER_SITE else []
    paths = [str(ROOT), *(p for p in [*user, *site.getsitepackages()] if os.path.isdir(p))]   # as site orders them
    return [sys.executable, "-S"], {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(paths)}
