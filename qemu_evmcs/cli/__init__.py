"""The ``qemu-evmcs`` command line (``main.py``: dispatch; ``commands/``: one module per sub-command)."""
