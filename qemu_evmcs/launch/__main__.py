"""``python -m qemu_evmcs.launch``: same as the ``qemu-evmcs-launch`` console script."""

from __future__ import annotations

import sys

from qemu_evmcs.launch.wrapper import run

sys.exit(run())
