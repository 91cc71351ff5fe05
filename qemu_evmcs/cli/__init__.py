"""The ``qemu-evmcs`` command line. Importing it first serves the compiled methods of every dataclass the
command defines from the per-user cache (:mod:`~qemu_evmcs.core.classcache`: a quarter of a start-up)."""

from qemu_evmcs.core import classcache

classcache.install()
