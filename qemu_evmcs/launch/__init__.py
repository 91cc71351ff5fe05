"""Launch an emulator with a private QMP monitor and verify the CPU it applied.

- :mod:`.process` -- the emulator process: private runtime directory, start, exit status (no asyncio);
- :mod:`.qmp` -- :class:`EmulatorSession`: QMP via ``qemu.qmp.QMPClient``, bounded shutdown, cleanup;
- :mod:`.cpuarg` -- which ``-cpu`` QEMU uses, refused early when QEMU would refuse it;
- :mod:`.warnings` -- QEMU's ``... doesn't support requested feature: MSR(48DH).x [bit 7]`` lines as data;
- :mod:`.verify` -- the post-start QMP verification report;
- :mod:`.wrapper` -- the ``qemu-evmcs-launch`` drop-in for ``qemu-system-x86_64``.

Nothing is imported here: importing the package (which ``python -m qemu_evmcs.launch.wrapper`` does first)
must not import ``asyncio``, since the wrapper starts the emulator before it loads its QMP client
(:mod:`.process`). Import the names from their modules.
"""
