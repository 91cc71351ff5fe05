"""The wrapper's options from the environment and from ``launch.conf`` files.

Why: libvirt's ``<emulator>`` takes a path and nothing else, so a wrapper run by libvirt never sees
command-line options of its own. Its options must come from somewhere libvirt lets the user put them:

- the environment (a domain's ``<qemu:commandline><qemu:env name='QEMU_EVMCS_HOST' value='...'/>``,
  or the shell for a script), see :data:`ENV_KEYS`;
- ``/etc/qemu-evmcs/launch.conf`` (every user), then the user's own file:
  ``$XDG_CONFIG_HOME/qemu-evmcs/launch.conf``, else ``~/.config/qemu-evmcs/launch.conf`` of the user's home
  in the password database. libvirt runs QEMU with ``HOME`` and ``XDG_CONFIG_HOME`` pointing into a per-domain
  directory, so when ``$XDG_CONFIG_HOME`` has no file the password-database home is tried as well;
- ``$QEMU_EVMCS_LAUNCH_CONF``: one file read instead of both of the above.

Precedence, lowest first: system file, user file, environment, command line. A file holds
``key = value`` lines (``#`` starts a comment line); the keys are the long option names without ``--``
(:data:`KEYS`). Booleans are ``yes|no|true|false|on|off|1|0``. In ``report-json``, ``{guest}`` is replaced by the
guest's name (``-name guest=NAME``, as libvirt passes it; ``qemu`` without ``-name``) and ``{pid}`` by the
wrapper's process id, so that one file serves every domain.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import read_text_capped

SYSTEM_CONF = "/etc/qemu-evmcs/launch.conf"
USER_CONF = os.path.join("qemu-evmcs", "launch.conf")
ENV_CONF = "QEMU_EVMCS_LAUNCH_CONF"

#: Option name (as in a file, and ``--NAME`` on the command line) -> is it a boolean.
KEYS: dict[str, bool] = {
    "emulator": False,
    "simulate": False,
    "host": False,
    "check": True,
    "report-json": False,
    "force": True,
    "qmp-timeout": False,
}

#: Environment variable -> option name.
ENV_KEYS: dict[str, str] = {f"QEMU_EVMCS_{key.upper().replace('-', '_')}": key for key in KEYS}

_TRUE = frozenset({"yes", "true", "on", "1"})
_FALSE = frozenset({"no", "false", "off", "0"})


@dataclass(frozen=True)
class Setting:
    """One option value and where it came from (for error messages)."""

    value: str
    source: str
    line: int | None = None

    def as_bool(self, key: str) -> bool:
        """The value as a boolean.

        :raise InputError: not one of the boolean spellings, naming file, line and key.
        """
        low = self.value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise InputError(f"{self.value!r} is not a boolean (yes/no, true/false, on/off, 1/0)",
                         file=self.source, line=self.line, key=key)


def parse_conf(text: str, source: str) -> dict[str, Setting]:
    """Parse one ``launch.conf`` text.

    :raise InputError: a line that is not ``key = value``, an unknown key, or an empty value.
    """
    out: dict[str, Setting] = {}
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            raise InputError(f"expected 'key = value', got {line[:80]!r}", file=source, line=no)
        if key not in KEYS:
            raise InputError(f"unknown key (known: {', '.join(KEYS)})", file=source, line=no, key=key)
        value = value.strip()
        if not value:
            raise InputError("empty value", file=source, line=no, key=key)
        out[key] = Setting(value, source, no)
    return out


def read_conf(path: str, *, named: bool = False) -> dict[str, Setting]:
    """Parse ``path``; a missing default file is an empty configuration.

    A file the user named (``named``: ``$QEMU_EVMCS_LAUNCH_CONF``) must exist, and no configuration file may be a
    dangling symlink: either was silently an empty configuration, so settings the user meant (``check = yes``)
    did not apply and nothing said so.

    :raise InputError: missing although named, a dangling symlink, unreadable, not UTF-8, or bad contents.
    """
    if not os.path.exists(path):
        if os.path.lexists(path):
            raise InputError(f"{path}: a dangling symbolic link (its target does not exist)")
        if named:
            raise InputError(f"${ENV_CONF} names {path}: no such file")
        return {}
    # The one capped reader: a FIFO or device named as the configuration is refused, not waited on.
    return parse_conf(read_text_capped(path, 1024 * 1024, what="configuration files"), path)


def _passwd_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or None
    except KeyError:
        return None


def conf_paths(env: Mapping[str, str]) -> list[str]:
    """The files read, lowest precedence first (see the module docstring)."""
    if env.get(ENV_CONF):
        return [env[ENV_CONF]]
    paths = [SYSTEM_CONF]
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg) and os.path.exists(os.path.join(xdg, USER_CONF)):
        paths.append(os.path.join(xdg, USER_CONF))
    else:
        home = _passwd_home()
        if home:
            paths.append(os.path.join(home, ".config", USER_CONF))
    return paths


def load_settings(env: Mapping[str, str] | None = None) -> dict[str, Setting]:
    """Every option set by a file or the environment, the higher-precedence source winning.

    :raise InputError: a bad file (named with its line).
    """
    env = os.environ if env is None else env
    merged: dict[str, Setting] = {}
    for path in conf_paths(env):
        merged.update(read_conf(path, named=bool(env.get(ENV_CONF))))
    for var, key in ENV_KEYS.items():
        value = env.get(var)
        if value:
            merged[key] = Setting(value, f"${var}")
    return merged


def guest_name(qemu_args: Sequence[str]) -> str:
    """The guest's name from ``-name guest=NAME,...`` or ``-name NAME``; ``qemu`` without one.

    Characters other than letters, digits and ``-_.+`` become ``_``: the name ends up in a file path.
    """
    name = "qemu"
    for i, arg in enumerate(qemu_args[:-1]):
        if arg in ("-name", "--name"):
            value = qemu_args[i + 1]
            for item in value.split(","):
                if item.startswith("guest="):
                    value = item[len("guest="):]
                    break
            else:
                value = value.split(",", 1)[0]
            name = value or name
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name).lstrip(".")
    return safe or "qemu"


def expand_report_path(template: str, qemu_args: Sequence[str]) -> str:
    """``report-json`` with ``{guest}`` and ``{pid}`` filled in (see the module docstring)."""
    return template.replace("{guest}", guest_name(qemu_args)).replace("{pid}", str(os.getpid()))
