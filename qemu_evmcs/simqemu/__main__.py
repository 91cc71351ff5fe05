"""``python -m qemu_evmcs.simqemu``: run the simulated QEMU (see :mod:`.server`)."""

import sys

from .server import main


sys.exit(main())
