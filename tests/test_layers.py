"""Imports only go down the layers, and never hide inside a function (README "Design", issue 10).

core -> kvm -> qemu -> policy -> {hostio, fleet, output, launch, simqemu} -> cli. A module may import its own
layer and any layer below; the five I/O packages share one level and may import each other. An import inside
a function (or under ``if TYPE_CHECKING``-free conditionals in a function) is how cycles were hidden before, so
it is refused everywhere. The expected rank of every package is written here by hand, not read from the code.

Any import statement inside a function is refused, the standard library's too: deferred imports (issue 15:
start-up) have ONE way in, ``qemu_evmcs.core.lazy.module("name")``: its
string-literal targets count as imports here and must go down the layers like any other; a computed name is
allowed only where listed in :data:`COMPUTED_LAZY` (with the reason); ``importlib.import_module`` and
``__import__`` are refused everywhere but ``core/lazy.py``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

from qemu_evmcs.core.hostgroup import as_fleet

PKG = Path(__file__).resolve().parent.parent / "qemu_evmcs"

#: Rank of each sub-package (lower = more basic). Top-level modules of the package (``__init__``,
#: ``__main__``) rank with the CLI.
RANK = {"core": 0, "kvm": 1, "qemu": 2, "policy": 3,
        "hostio": 4, "fleet": 4, "output": 4, "launch": 4, "simqemu": 4,
        "cli": 5}


#: The only modules that may call ``lazy.module`` with a computed name, and why the layer rule holds there.
COMPUTED_LAZY = {
    "qemu_evmcs.cli.main": "the running sub-command's module, from its static table (cli is the top layer)",
    "qemu_evmcs.qemu.cpu": "a model-provider plug-in the user names in an environment variable (not this package)",
}
#: The module that implements deferred imports (the only caller of importlib.import_module).
LAZY_MODULE = "qemu_evmcs.core.lazy"


def _layer(module: str) -> str:
    """``qemu_evmcs.policy.negotiate`` (or ``qemu_evmcs.policy``) -> ``policy``; the package itself and its
    top-level modules (``qemu_evmcs.__main__``) -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in RANK else "cli"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def _lazy_calls(tree: ast.Module) -> list[tuple[str | None, int, str]]:
    """(target if a string literal else ``None``, line, callee) of every deferred import in ``tree``:
    ``lazy.module(...)`` and ``lazy.proxy(...)`` of core.lazy (both reported as ``lazy.module``),
    ``importlib.import_module(...)``, ``import_module(...)`` and ``__import__(...)``."""
    found: list[tuple[str | None, int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            callee = f"{f.value.id}.{f.attr}"
        elif isinstance(f, ast.Name):
            callee = f.id
        else:
            continue
        if callee == "lazy.proxy":
            callee = "lazy.module"            # the same deferred import, at the first attribute read
        if callee not in ("lazy.module", "importlib.import_module", "import_module", "__import__"):
            continue
        arg = node.args[0] if node.args else None
        literal = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
        found.append((literal, node.lineno, callee))
    return found


def _imports(tree: ast.Module, module: str, is_pkg: bool) -> list[tuple[str, int, bool]]:
    """(imported qemu_evmcs module, line, inside a function) for every import in ``tree``; a literal
    ``lazy.module("qemu_evmcs...")`` counts as an import outside any function (it is the sanctioned way)."""
    found: list[tuple[str, int, bool]] = [(target, line, False) for target, line, callee in _lazy_calls(tree)
                                          if callee == "lazy.module" and target and target.startswith("qemu_evmcs")]

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                # Any module imported in a function is reported (not only this package's): a deferred import
                # goes through core.lazy, whatever it loads.
                found.extend((a.name, child.lineno, in_func) for a in child.names
                             if a.name.startswith("qemu_evmcs") or in_func)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (child.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                if base.startswith("qemu_evmcs") or in_func:
                    found.append((base, child.lineno, in_func))
            visit(child, func)

    visit(tree, False)
    return found


def _lazy_violations(tree: ast.Module, module: str) -> list[str]:
    """Deferred imports that bypass core.lazy, or pass it a computed name outside :data:`COMPUTED_LAZY`."""
    bad = []
    for target, line, callee in _lazy_calls(tree):
        if callee != "lazy.module":
            if module != LAZY_MODULE:
                bad.append(f"{module}:{line} calls {callee} (deferred imports go through core.lazy.module)")
        elif target is None and module not in COMPUTED_LAZY:
            bad.append(f"{module}:{line} calls lazy.module with a computed name (a string literal is checked "
                       "against the layers; see COMPUTED_LAZY)")
    return bad


@functools.cache   # both parametrized cases read one parse of every module (~1 s on the build machine)
def _violations() -> tuple[tuple[str, ...], tuple[str, ...]]:
    upward: list[str] = []
    in_function: list[str] = []
    for module, path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        in_function.extend(_lazy_violations(tree, module))
        mine = _layer(module)
        for target, line, in_func in _imports(tree, module, path.name == "__init__.py"):
            where = f"{path.relative_to(PKG.parent)}:{line} imports {target}"
            if in_func:
                in_function.append(where)
            if not target.startswith("qemu_evmcs"):
                continue                      # another package, imported in a function: reported above
            theirs = _layer(target) if target != "qemu_evmcs" else "cli"
            if RANK[theirs] > RANK[mine]:
                upward.append(f"{where} ({mine} -> {theirs})")
    return tuple(upward), tuple(in_function)


def test_layer_of_a_module_is_its_sub_package() -> None:
    assert _layer("qemu_evmcs.core.registry") == "core"
    assert _layer("qemu_evmcs.qemu") == "qemu"          # "from qemu_evmcs.qemu import models"
    assert _layer("qemu_evmcs.__main__") == "cli"
    assert _layer("qemu_evmcs") == "cli"


def test_the_check_sees_an_upward_and_an_in_function_import() -> None:
    """The checker itself can fail: a made-up policy module importing fleet inside a function."""
    tree = ast.parse("from qemu_evmcs.core import errors\nimport json\n"
                     "def f():\n    from qemu_evmcs.fleet import loader\n    import difflib\n")
    got = _imports(tree, "qemu_evmcs.policy.x", False)
    assert got == [("qemu_evmcs.core", 1, False), ("qemu_evmcs.fleet", 4, True), ("difflib", 5, True)]
    assert RANK[_layer("qemu_evmcs.fleet.loader")] > RANK[_layer("qemu_evmcs.policy.x")]


def test_the_check_sees_lazy_loads() -> None:
    """A literal lazy load is an import (ranked, so this upward one would fail); a computed name, or
    importlib used directly, is refused outside the listed modules."""
    tree = ast.parse("from qemu_evmcs.core import lazy\nimport importlib\n"
                     "def f(n):\n    lazy.module('qemu_evmcs.fleet.loader')\n    lazy.module('yaml')\n"
                     "    lazy.module(n)\n    importlib.import_module('yaml')\n    __import__('json')\n"
                     "x = lazy.proxy('qemu_evmcs.cli.main')\n")
    assert ("qemu_evmcs.fleet.loader", 4, False) in _imports(tree, "qemu_evmcs.policy.x", False)
    assert ("qemu_evmcs.cli.main", 9, False) in _imports(tree, "qemu_evmcs.policy.x", False)
    assert not [t for t in _imports(tree, "qemu_evmcs.policy.x", False) if t[0] == "yaml"]
    bad = _lazy_violations(tree, "qemu_evmcs.policy.x")
    assert [b.split(" ", 1)[0] for b in bad] == ["qemu_evmcs.policy.x:6", "qemu_evmcs.policy.x:7",
                                                 "qemu_evmcs.policy.x:8"]
    assert len(_lazy_violations(tree, LAZY_MODULE)) == 1        # lazy.py itself may use importlib, not lazy(n)
    assert set(COMPUTED_LAZY) <= {m for m, _ in _modules()}


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(RANK)


@pytest.mark.parametrize("kind", ["upward", "in-function"])
def test_imports_go_down_and_stay_at_module_level(kind: str) -> None:
    upward, in_function = _violations()
    bad = upward if kind == "upward" else in_function
    assert not bad, f"{len(bad)} {kind} import(s):\n" + "\n".join(bad)


def test_core_and_policy_take_loaded_hosts_not_names() -> None:
    """A bundled name or a path given to the core grouping is refused: reading files and looking up names is the
    I/O layer's loader (issue 10), so ``as_fleet`` must not quietly do it."""
    with pytest.raises(TypeError, match="not a loaded host profile"):
        as_fleet(["skylake-6.3"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not a loaded host profile"):
        as_fleet("skylake-6.3")  # type: ignore[arg-type]
