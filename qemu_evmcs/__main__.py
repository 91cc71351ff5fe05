"""``python -m qemu_evmcs`` runs the ``qemu-evmcs`` CLI."""

from qemu_evmcs.cli.main import main

main()
