"""QEMU's spelling rules for option values, shared by the launcher and the simulated QEMU.

Why one module: :mod:`qemu_evmcs.launch.verify` (reading the user's ``-cpu`` for the real QEMU) and
:mod:`qemu_evmcs.simqemu` (the simulated QEMU's command line and ``-global``/``-cpu`` properties) must
agree with QEMU, and so with each other, on what counts as a boolean and how a feature name is spelt.
Each had its own copy of these tables. Standard library only: the simulator imports it at start-up.

The ``-cpu`` parsers themselves stay apart on purpose: the launcher's is lenient (it only reports on
what QEMU did) while the simulator's reproduces QEMU's warnings and ``,,`` escapes.
"""

from __future__ import annotations

#: Values QEMU's ``qapi_bool_parse()`` (string and options visitors) accepts for true and for false.
BOOL_TRUE = frozenset({"on", "yes", "true", "y"})
BOOL_FALSE = frozenset({"off", "no", "false", "n"})


def qapi_bool(value: str) -> bool | None:
    """``qapi_bool_parse()``: True or False for QEMU's spellings (case-sensitive, as QEMU), None otherwise.

    None lets each caller word the refusal as QEMU does at that place (``-qmp``, ``-global``, ``-cpu``).
    """
    if value in BOOL_TRUE:
        return True
    if value in BOOL_FALSE:
        return False
    return None


def feat2prop(name: str) -> str:
    """QEMU's ``feat2prop()``: ``_`` becomes ``-`` in feature names (``vmx_posted_intr`` -> ``vmx-posted-intr``)."""
    return name.replace("_", "-")
