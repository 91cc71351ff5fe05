"""What a new user stumbled on: typos of bundled names, doubled "error:"/"no safe answer:" prefixes, silent
empty answers, a libvirt XML with a shell comment, options without help. One test per fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import Run, cli_runner
from qemu_evmcs.fleet.inventory import FleetDb
from qemu_evmcs.launch import wrapper
from qemu_evmcs.core.profile import bundled_profile_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


def test_typo_of_a_bundled_profile_name_suggests_the_name(run: Run) -> None:
    for argv in (["explain", "--host", "skylake-63"], ["guest-msrs", "--host", "skylake-63"],
                 ["host", "show", "skylake-63"]):
        assert run(*argv) == (2, "", "error: skylake-63: no such file, and no bundled profile of that name "
                                     "(did you mean skylake-6.3?)\n"), argv
    rc, _, err = run("negotiate", "--model", "max", "--hosts", "skylake-6.3", "icelake61")
    # Without --inventory a bare word cannot be an inventory host name either: the error says so.
    assert (rc, err) == (2, "error: no such host profile 'icelake61' (neither a file nor a bundled profile name; "
                            "host names need an inventory: --inventory DB; did you mean icelake-6.1?)\n")
    # A path keeps the reader's own error; a name far from every sample lists them.
    assert run("host", "show", "./nope.yaml") == (2, "", "error: ./nope.yaml: No such file or directory\n")
    rc, _, err = run("host", "show", "zzz")
    assert rc == 2 and "bundled profiles: broadwell-6.1, cascadelake-5.4, cascadelake-w-6.8, epyc-amd-6.6," in err


def test_model_path_or_name_typo_says_what_exists(run: Run, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # README's `--model cpu_models/X.yaml` works only from the checkout
    rc, _, err = run("negotiate", "--model", "cpu_models/Skylake-Server-evmcs.yaml", "--hosts", "skylake-6.3")
    assert (rc, err) == (2, "error: cpu_models/Skylake-Server-evmcs.yaml: No such file or directory; an installed "
                            "definition has that name: --model Skylake-Server-evmcs\n")
    # Skylake-Server itself is QEMU's model (issue 16: --model takes QEMU's names); a typo gets suggestions
    # from definitions and QEMU models alike.
    rc, _, err = run("negotiate", "--model", "Skylake-Server-evmc", "--hosts", "skylake-6.3")
    assert rc == 2 and err.startswith("error: unknown CPU model 'Skylake-Server-evmc' (did you mean "
                                      "Skylake-Server-evmcs")


def test_migrate_check_source_abort_is_one_verdict_line(run: Run) -> None:
    """QEMU's own "error: failed to set MSR" loses its prefix: the guest not starting is a verdict (issue 13)."""
    rc, out, err = run("migrate-check", "--model", "max", "--design", "naive", "--from", "cascadelake-5.4",
                       "--to", "icelake-5.15")
    assert (rc, err) == (1, "") and out.count("\n") == 1 and "error:" not in out
    assert out.startswith("source-fails: the guest cannot start on the source cascadelake-5.4: failed to set MSR "
                          "0x48d")


def test_admit_without_any_safe_answer_names_the_reason_not_every_feature(run: Run) -> None:
    rc, out, err = run("admit", "--pool", "skylake-6.3", "icelake-6.1", "--candidate", "epyc-amd-6.6")
    assert rc == 1
    assert out.splitlines()[1].startswith("  the pool's guests would lose all ")
    assert "vmx-ept," not in out
    # A negative answer is a verdict line on stdout, not an error: line (issue 13).
    assert err == "" and out.splitlines()[0] == (
        "refuse: epyc-amd-6.6: with epyc-amd-6.6 the pool has no safe answer: host epyc-amd-6.6: "
        "AuthenticAMD has no eVMCS (Intel VMX only)")


def test_negotiate_all_libvirt_labels_are_xml_comments_and_text_explains_columns(run: Run) -> None:
    hosts = ["skylake-5.10", "skylake-6.3", "icelake-6.1"]
    rc, out, _ = run("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", *hosts, "--strategy", "all",
                     "--format", "libvirt")
    assert rc == 0 and out.startswith("<!-- shipped -->\n<cpu ") and "\n# " not in out
    rc, out, _ = run("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", *hosts, "--strategy", "all",
                     "--format", "cpu")
    assert rc == 0 and out.startswith("# shipped\nSkylake-Server-v5,")
    rc, out, _ = run("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", *hosts, "--strategy", "all")
    assert rc == 0 and "comparison (allows: VMX features only this design shows the guest; blocks: " in out


def test_host_import_asks_for_name_and_kernel_at_once(run: Run, tmp_path: Path) -> None:
    rc, text, _ = run("host", "show", "skylake-6.3", "--format", "vmxcap")
    f = tmp_path / "sky.vmxcap"
    f.write_text(text)
    assert run("host", "import", str(f)) == (2, "", f"error: {f}: no host name and no kernel release in the input; "
                                                    "pass --name and --kernel (e.g. --kernel 6.1.55)\n")


def test_fleet_query_feature_typo_and_empty_answer(run: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "f.db")
    assert run("fleet", "import", "--db", db, str(Path(bundled_profile_dir()) / "skylake-6.3.yaml"))[0] == 0
    assert run("fleet", "query", "--db", db, "--feature", "vmx-pmll") == (
        2, "", "error: --feature: unknown VMX feature 'vmx-pmll' (did you mean vmx-pml?)\n")
    assert run("fleet", "query", "--db", db, "--feature", "VMX-PML", "--view", "host") == (0, "skylake-6.3\n", "")
    assert run("fleet", "query", "--db", db, "--feature", "vmx-pml") == (0, "", "no host matches\n")
    assert run("fleet", "query", "--db", db, "--feature", "vmx-pml", "--json") == (0, "[]\n", "")


def test_directory_of_pool_directories_is_not_a_silent_empty_fleet(run: Run, tmp_path: Path) -> None:
    top = tmp_path / "fleet"
    (top / "pool-a").mkdir(parents=True)
    (top / "pool-a" / "h1.yaml").write_text((Path(bundled_profile_dir()) / "skylake-6.3.yaml").read_text())
    hint = (f"no host profiles found (only *.yaml files directly in {top} are read, not its sub-directories such "
            f"as {top / 'pool-a'}: pass them, e.g. {top}/*/)")
    db = str(tmp_path / "f.db")
    assert run("fleet", "import", "--db", db, str(top)) == (2, "", f"error: {top}: {hint}\n")
    rc, _, err = run("negotiate", "--model", "max", "--hosts", str(top))
    assert (rc, err) == (2, f"error: {top}: {hint}\n")
    assert run("fleet", "import", "--db", db, "--pool", "pool-a", str(top / "pool-a"))[0] == 0
    # A directory imported before and emptied since is still a re-import that removes its hosts.
    (top / "pool-a" / "h1.yaml").unlink()
    assert run("fleet", "import", "--db", db, str(top / "pool-a"))[0] == 0
    with FleetDb(db) as inv:
        assert inv.query() == []


def test_every_option_says_what_it_does(run: Run) -> None:
    for argv, option in [(["negotiate"], "--design"), (["negotiate"], "--format"), (["admit"], "--candidate"),
                         (["admit"], "--design"), (["compare-designs"], "--json"), (["fleet", "query"], "--db"),
                         (["fleet", "stats"], "--json"), (["report"], "--out")]:
        _, out, _ = run(*argv, "--help")
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
        assert len(lines[at].split()) > 2 or not lines[at + 1].strip().startswith("-"), (argv, option)
    _, out, _ = run("fleet", "--help")
    assert "``" not in out
    _, out, _ = run("validate", "--help")
    assert "default: cpu_models/)" not in out and "installed definitions" in " ".join(out.split())


def test_launch_profile_typo_is_usage_error_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert wrapper.main(["--simulate", "skylake-63", "-cpu", "max"]) == 2
    assert capsys.readouterr().err == ("error: --simulate: no such host profile 'skylake-63' (neither a file nor a "
                                       "bundled profile name; did you mean skylake-6.3?)\n")
    assert wrapper.main(["--host", "skylake-63", "--check", "-cpu", "max"]) == 2
    assert "error: --host: no such host profile 'skylake-63'" in capsys.readouterr().err


def test_launch_takes_the_bundled_real_cpu_profile_names(capsys: pytest.CaptureFixture[str]) -> None:
    # westmere-5.4 and haswell-5.15 are bundled (data/profiles/fleet/) and every qemu-evmcs command takes them by
    # name. Was: "error: --simulate: no such host profile 'westmere-5.4' (...; did you mean westmere-5.4?)",
    # the wrapper looking for names in data/profiles/ only.
    for flag, name in (("--simulate", "westmere-5.4"), ("--host", "haswell-5.15")):
        opts = wrapper.WrapperOptions(**{flag[2:]: name})  # type: ignore[arg-type]
        wrapper.require_profiles(opts)   # no error
    assert capsys.readouterr().err == ""


def test_launch_with_an_invalid_simulate_profile_is_bad_input_like_host(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A profile file that exists but is not a valid profile (an unknown key): bad input, exit 2, one line naming
    # the file, as `--host` gives. Was: the simulated QEMU was started and died, so the wrapper said
    # "qemu-evmcs-sim exited with status 1 before QMP was ready: ..." with exit 1 (emulator failed to start).
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nvendor: GenuineIntel\nkernel: '6.3'\ncolour: red\nmsrs: {}\n")
    assert wrapper.main(["--simulate", str(bad), "-cpu", "max"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.yaml" in err and "colour" in err and err.count("\n") == 1, err
    assert wrapper.main(["--host", str(bad), "--check", "-cpu", "max"]) == 2
    assert "colour" in capsys.readouterr().err


def test_make_fleet_by_pool_help_says_how_to_read_it() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-fleet"), "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--pool NAME" in " ".join(out.split())
