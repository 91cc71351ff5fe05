"""The one host selector (issue 17) on every host-taking command: inventories, pools, --where, host names.

The inventory here is built by the real ``fleet import`` from bundled profiles renamed to operator-style host
names, in two pools:

- fra1: fra1-web01 (Skylake, kernel 5.10.0-26-amd64), fra1-web02 (Skylake, 6.3.0)
- ams2: ams2-db01 (Ice Lake, 6.1.55), ams2-db02 (Cascade Lake, 5.4.0-150-generic)

Every expectation below is the host list written out by hand from that table, never read back from the
selector.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from cli_helpers import Run, cli_runner
from inventory_helpers import build_inventory

HOSTS = {
    "fra1": {"fra1-web01": "skylake-5.10", "fra1-web02": "skylake-6.3"},
    "ams2": {"ams2-db01": "icelake-6.1", "ams2-db02": "cascadelake-5.4"},
}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def inventory(tmp_path: Path, run: Run) -> str:
    return build_inventory(run, tmp_path, {pool: [(bundled, host, None) for host, bundled in hosts.items()]
                                           for pool, hosts in HOSTS.items()})


def _negotiated_hosts(out: str) -> list[str]:
    """Every host of the JSON answer's groups (negotiate, baseline and compare-designs list them so)."""
    data = json.loads(out)
    return sorted(h for g in data["groups"] for h in g["hosts"])


def test_negotiate_one_pool(run: Run, inventory: str) -> None:
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--pool", "fra1", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["fra1-web01", "fra1-web02"]


def test_negotiate_two_pools_repeatable(run: Run, inventory: str) -> None:
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--pool", "fra1", "--pool", "ams2",
                       "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["ams2-db01", "ams2-db02", "fra1-web01", "fra1-web02"]


def test_where_filters_compose(run: Run, inventory: str) -> None:
    # kernel 6.* : fra1-web02 (6.3.0) and ams2-db01 (6.1.55); minus the Ice Lake one by name.
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--where", "kernel=6.*",
                       "--where", "name!=ams2-*", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["fra1-web02"]


def test_where_era_and_feature(run: Run, inventory: str) -> None:
    # The 5.4 host (era 4.20-5.5) sanitizes at enable time; era ids come from eras.yaml.
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--where", "era=6.3+", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["fra1-web02"]
    # Every Intel host reports EPT to QEMU (host view); the selection is all four.
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "--where", "host-feature=vmx-ept",
                       "--where", "vendor=genuineintel", "--json")
    assert rc == 0, err
    assert len(_negotiated_hosts(out)) == 4


def test_host_names_as_fleet_query_prints_them(run: Run, inventory: str) -> None:
    rc, out, _ = run("fleet", "query", "--db", inventory, "--pool", "ams2")
    assert out.split() == ["ams2-db01", "ams2-db02"]
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, *out.split()[:1], "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["ams2-db01"]


def test_hosts_from_stdin(run: Run, inventory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"# from fleet query\nfra1-web01\n\nams2-db02\n")))
    rc, out, err = run("negotiate", "--model", "max", "--inventory", inventory, "--hosts-from", "-", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["ams2-db02", "fra1-web01"]


def test_selection_composes_with_bundled_names(run: Run, inventory: str) -> None:
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, "skylake-6.3", "--pool", "ams2",
                       "--where", "kernel=6.*", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["ams2-db01", "skylake-6.3"]


def test_baseline_pool_names_and_old_spelling(run: Run, inventory: str) -> None:
    rc, out, err = run("baseline", "--pool", "fra1", inventory, "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["fra1-web01", "fra1-web02"]
    # The older spelling: --pool followed by host profiles (bundled names here) means "no model".
    rc, out, err = run("baseline", "--pool", "skylake-5.10", "skylake-6.3", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["skylake-5.10", "skylake-6.3"]


def test_admit_pool_by_name_candidate_by_host_name(run: Run, inventory: str) -> None:
    rc, out, err = run("admit", "--pool", inventory, "--pool", "fra1", "--candidate", "fra1-web02", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["candidate"] == "fra1-web02"


def test_migrate_check_host_names(run: Run, inventory: str) -> None:
    rc, out, err = run("migrate-check", "--model", "max", "--from", "fra1-web02", "--to", "ams2-db01",
                       "--inventory", inventory, "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert (data["source"], data["destination"]) == ("fra1-web02", "ams2-db01")


def test_compare_designs_one_pool(run: Run, inventory: str) -> None:
    rc, out, err = run("compare-designs", "--hosts", inventory, "--pool", "fra1", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["fra1-web01", "fra1-web02"]


def test_validate_with_selected_hosts(run: Run, inventory: str) -> None:
    rc, out, err = run("validate", "--hosts", inventory, "--where", "name=ams2-db01", "--json")
    assert rc == 0, err
    assert "ams2-db01" in out and "fra1-web01" not in out


def test_report_one_pool(run: Run, inventory: str, tmp_path: Path) -> None:
    out_file = str(tmp_path / "r.html")
    rc, _, err = run("report", "--hosts", inventory, "--pool", "ams2", "--out", out_file)
    assert rc == 0, err
    assert "report: 2 hosts" in err
    assert os.path.getsize(out_file) > 0


@pytest.mark.parametrize("argv, message", [
    (["--where", "colour=red"], "error: --where: 'colour=red': unknown key 'colour'"),
    (["--where", "era=9.9-9.9"], "error: "),
    (["--where", "nested=maybe"], "error: --where: 'nested=maybe': nested takes on or off"),
    (["nosuch-host"], "error: no host 'nosuch-host' in "),
    (["--pool", "nosuchpool"], "error: no host matches --pool nosuchpool"),
])
def test_bad_selections_are_one_error_line(run: Run, inventory: str, argv: list[str], message: str) -> None:
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inventory, *argv)
    assert rc == 2
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_host_name_without_inventory_says_so(run: Run) -> None:
    rc, _, err = run("negotiate", "--model", "max", "--hosts", "fra1-web01")
    assert rc == 2
    assert "host names need an inventory" in err


def test_hosts_from_refuses_what_is_not_a_regular_file(run: Run, inventory: str, tmp_path: Path) -> None:
    fifo = tmp_path / "names.fifo"
    os.mkfifo(fifo)                      # a FIFO nobody writes would block a plain open() for good
    rc, out, err = run("negotiate", "--model", "max", "--inventory", inventory, "--hosts-from", str(fifo))
    assert rc == 2 and out == ""
    assert err.startswith(f"error: {fifo}") and len(err.splitlines()) == 1, err


def test_an_inventory_host_named_like_a_bundled_profile_is_the_inventorys(run: Run, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the verifier: `fleet import` of the bundled real fleet names its hosts like the bundled files, and
    # then the README's pipeline `fleet query --db DB | negotiate --inventory DB --hosts-from -` ended in
    # "duplicate host name 'westmere-5.4'": the name was taken as the bundled file AND the inventory gave all
    # its hosts. A name the given inventory holds is that inventory's host.
    inv = build_inventory(run, tmp_path, {"p": [("skylake-6.3", "skylake-6.3", None),
                                                ("icelake-6.1", "icelake-6.1", None),
                                                ("skylake-5.10", "other-host", None)]})
    rc, out, err = run("negotiate", "--model", "max", "--inventory", inv, "--hosts", "skylake-6.3", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["skylake-6.3"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"icelake-6.1\nskylake-6.3\n")))
    rc, out, err = run("negotiate", "--model", "max", "--inventory", inv, "--hosts-from", "-", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["icelake-6.1", "skylake-6.3"]
    # A bundled name the inventory does not hold is still the bundled profile, composed with the inventory.
    rc, out, err = run("negotiate", "--model", "max", "--hosts", inv, "other-host", "skylake-5.10", "--json")
    assert rc == 0, err
    assert _negotiated_hosts(out) == ["other-host", "skylake-5.10"]


def test_an_empty_hosts_from_list_selects_nothing(run: Run, inventory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by the verifier: `fleet query --db DB --era 6.3+` that matches no host prints nothing, and
    # `| negotiate --inventory DB --hosts-from -` then negotiated the WHOLE inventory (no name = every host).
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"# nothing matched\n")))
    rc, out, err = run("negotiate", "--model", "max", "--inventory", inventory, "--hosts-from", "-")
    assert (rc, out) == (2, "") and err.startswith("error: ") and "--hosts-from" in err, err
