"""``python -m qemu_evmcs.simqemu``: run the simulated QEMU (see :mod:`.server`)."""

import sys

from qemu_evmcs.simqemu.server import run


sys.exit(run())
