"""``python -m qemu_evmcs`` runs the ``qemu-evmcs`` CLI."""

from .cli import main

main()
