"""A refused first ``fleet import`` leaves no database behind; a successful one appears whole.

Why: before, ``fleet import --db new.db /dev/zero`` (or a bad YAML file, an empty path, a missing file)
said ``error:`` and exit 2 but left ``new.db`` behind: an empty inventory the user never asked for, which
the next ``fleet query --db new.db`` then reads as "0 hosts" instead of "no such fleet database". A new
database is now built in a private directory beside it and linked into place only after its transaction
committed, so other readers never see a half-made file and a refusal leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Run, cli_runner

from qemu_evmcs.core.profile import bundled_profile_dir
from qemu_evmcs.fleet.inventory import NEW_DB_PREFIX, FleetDb

SAMPLE = Path(bundled_profile_dir()) / "skylake-5.10.yaml"


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch, ["fleet"])


def _bad_inputs(tmp: Path) -> dict[str, str]:
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("name: a\nname: b\n")          # duplicate key: refused with its line
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "a.yaml").write_text(SAMPLE.read_text())
    (tree / "z.yaml").symlink_to("/dev/zero")            # found while walking, after a.yaml was parsed
    return {"device": "/dev/zero", "empty": "", "missing": str(tmp / "nope.yaml"),
            "bad-yaml": str(bad_yaml), "symlink-in-tree": str(tree)}


@pytest.mark.parametrize("case", ["device", "empty", "missing", "bad-yaml", "symlink-in-tree"])
def test_refused_first_import_leaves_no_database(case: str, tmp_path: Path, run: Run) -> None:
    db = tmp_path / "new.db"
    rc, out, err = run("fleet", "import", "--db", str(db), _bad_inputs(tmp_path)[case])
    assert (rc, out) == (2, "") and err.startswith("error: ") and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == sorted(["bad.yaml", "tree"]), "the refused import left files"


def test_refused_reimport_keeps_the_existing_database(tmp_path: Path, run: Run) -> None:
    db = tmp_path / "old.db"
    assert run("fleet", "import", "--db", str(db), str(SAMPLE))[0] == 0
    before = db.read_bytes()
    rc, _, err = run("fleet", "import", "--db", str(db), "/dev/zero")
    assert rc == 2 and "/dev/zero" in err
    assert db.read_bytes() == before
    with FleetDb(db) as fdb:
        assert [r["name"] for r in fdb.query()] == ["skylake-5.10"]


def test_first_import_creates_the_database_whole(tmp_path: Path, run: Run) -> None:
    db = tmp_path / "new.db"
    rc, out, _ = run("fleet", "import", "--db", str(db), str(SAMPLE))
    assert rc == 0 and out.startswith(f"imported into {db}: 1 new")
    assert os.listdir(tmp_path) == ["new.db"]          # no private build directory left
    with FleetDb(db) as fdb:
        assert [r["name"] for r in fdb.query()] == ["skylake-5.10"]


def test_a_killed_first_import_is_swept_by_the_next(tmp_path: Path, run: Run) -> None:
    """SIGKILL cannot be caught: the private directory stays until the next import of that directory."""
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    # The child builds the new database, then blocks on the FIFO inside the import, where we kill it.
    code = (
        "import sys; from qemu_evmcs.fleet import inventory as inv\n"
        "orig = inv.FleetDb.import_paths\n"
        "def slow(self, *a, **k):\n"
        f"    open({str(gate)!r}).read()\n"
        "    return orig(self, *a, **k)\n"
        "inv.FleetDb.import_paths = slow\n"
        "from qemu_evmcs.cli.main import main; sys.exit(main())\n")
    child = subprocess.Popen([sys.executable, "-c", code, "fleet", "import", "--db", str(tmp_path / "new.db"),
                              str(SAMPLE)], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    with open(gate, "w"):   # returns once the child opened the gate: it is inside the import, blocked on it
        leftovers = [n for n in os.listdir(tmp_path) if n.startswith(NEW_DB_PREFIX)]
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(leftovers) == 1 and not (tmp_path / "new.db").exists()
    assert run("fleet", "import", "--db", str(tmp_path / "other.db"), str(SAMPLE))[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["gate", "other.db"]
