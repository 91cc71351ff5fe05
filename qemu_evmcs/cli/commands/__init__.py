"""Sub-commands of ``qemu-evmcs``; each module exposes ``register(subparsers)``."""
