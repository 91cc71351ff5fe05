"""Shared pytest configuration: the golden-file regenerate switch."""

from __future__ import annotations

from typing import Callable

import pytest

from golden_util import compare_or_regen, regen_from_env


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare ``text`` with tests/golden/<name>, or rewrite it when regenerating."""
    regen = bool(request.config.getoption("--regen-golden")) or regen_from_env()

    def check(name: str, text: str) -> None:
        compare_or_regen(name, text, regen=regen)

    return check
