"""The HTML fleet report: content, self-containment, atomic writing, and a real headless-browser render."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from needs import unavailable

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.cli.main import run
from qemu_evmcs.fleet.sources import load_fleet
from qemu_evmcs.core.profile import bundled_profile_dir
from qemu_evmcs.fleet.report import build_groups, partition, render_html, write_report

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = bundled_profile_dir()


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rfleet") / "fleet.yaml"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-fleet"), "--count", "600", "--out", str(out),
                    "--seed", "11"], check=True, capture_output=True)
    return out


def test_groups_states_and_partition() -> None:
    groups = build_groups(load_fleet(SAMPLES, progress=False))
    by_name = {g.hosts[0]: g for g in groups}
    assert len(groups) == 8
    # 6.1 era, guest CPUID bit clear: PERF_GLOBAL_CTRL loads hidden by the gate; 5.4 hides them by the filter.
    assert by_name["icelake-6.1"].states["vmx-exit-load-perf-global-ctrl"] == "prf"
    assert by_name["cascadelake-5.4"].states["vmx-exit-load-perf-global-ctrl"] == "flt"
    assert by_name["skylake-6.3"].states["vmx-ept"] == "vis"
    assert by_name["epyc-amd-6.6"].states["vmx-ept"] == "nrp"
    assert not by_name["epyc-amd-6.6"].evmcs_ok
    classes, incapable = partition(groups)
    assert {g.hosts[0] for g in incapable} >= {"epyc-amd-6.6", "skylake-nested-off-6.1"}
    for cl in classes:
        assert len({g.guest for g in cl}) == 1
    assert sum(len(cl) for cl in classes) + len(incapable) == 8


def test_html_is_self_contained(fleet_file: Path) -> None:
    text = render_html(load_fleet(str(fleet_file), progress=False))
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and "@import" not in text and "url(" not in text
    for needle in ("heat-unfiltered", "heat-evmcs", "Pool partition", "Design comparison", "hidden by the eVMCS filter",
                   "hidden by the PERF_GLOBAL_CTRL CPUID gate", "not reported by KVM", "window.__reportOk=true",
                   "shipped", "vmx-msrs"):
        assert needle in text, needle
    assert "600 hosts" in text


def test_report_explains_colours_columns_and_designs(fleet_file: Path) -> None:
    """What a platform engineer needs to read the charts is on the page, not only in hover tips."""
    from qemu_evmcs.fleet.report import DESIGN_HELP, STATE_HELP, STATES, VERDICTS
    fleet = load_fleet(str(fleet_file), progress=False)
    text = render_html(fleet)
    for state, (label, colour) in STATES.items():       # every heatmap colour has a legend entry with its meaning
        assert f'background:{colour}"></i>{label}</dt><dd>' in text, state
        assert html.escape(STATE_HELP[state], quote=True) in text
    for v in ("fine", "blocked", "unsafe", "source-fails"):
        assert f"{VERDICTS[v][0].split(' (')[0]}" in text
    assert "black outline" in text and "to (destination)" in text and "from (source)" in text
    for d, help_text in DESIGN_HELP.items():             # each design says what it is
        assert f"<td class=gid>{d}</td><td>{html.escape(help_text)}</td>" in text
    # The group table (the key to the charts' column labels) comes before the charts.
    assert text.index("<h2>Host groups</h2>") < text.index('id="heat-unfiltered"') < text.index("Design comparison")
    # Groups without eVMCS are said to be left out of the design matrices.
    groups = build_groups(fleet)
    incapable = [g.label for g in groups if not g.evmcs_ok]
    assert incapable and f"({html.escape(', '.join(incapable))}) have no row or column" in text
    # Legible: labels of at least 10 px; features everyone sees alike are listed, not drawn.
    sizes = [float(x) for x in re.findall(r'<text [^>]*font-size="([0-9.]+)"', text)]
    assert sizes and min(sizes) >= 8.5 and sorted(sizes)[len(sizes) // 2] >= 10
    m = re.search(r"(\d+) features not drawn", text)
    assert m is not None
    drawn = text.split('id="heat-evmcs"')[1].split("</svg>")[0].count("<rect ") // len(groups)
    assert drawn + int(m.group(1)) == json.loads(text.split('id="report-data">')[1].split("</script>")[0])["features"]
    assert 0 < drawn < 60


def test_uniform_rows_are_only_features_every_capable_group_sees() -> None:
    groups = build_groups(load_fleet(SAMPLES, progress=False))
    text = render_html(load_fleet(SAMPLES, progress=False))
    listed = text.split("features not drawn")[1].split("<p>")[1].split("</p>")[0].split(", ")
    for f in listed:
        for g in groups:
            if g.evmcs_ok:
                assert f in g.unfiltered and g.states[f] == "vis", (f, g.gid)
    # vmx-posted-intr is filtered on some eras: it is drawn, not listed.
    assert "vmx-posted-intr" not in listed and ">vmx-posted-intr</text>" in text


def test_report_cli_refuses_overwrite_and_writes_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert run(["report", "--hosts", SAMPLES, "--out", str(out)]) == 0
    first = out.read_text()
    capsys.readouterr()
    assert run(["report", "--hosts", SAMPLES, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out) in err and "--force" in err and err.count("\n") == 1
    assert out.read_text() == first
    assert run(["report", "--hosts", SAMPLES, "--out", str(out), "--force"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]   # no temporary left behind


def test_write_report_failure_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")

    def boom(src: str, dst: str) -> None:
        raise OSError("rename failed (injected)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(InputError, match="cannot write: rename failed"):  # one error line, not a traceback
        write_report("new", str(out), force=True)
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_report_from_inventory_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "f.db"
    assert run(["fleet", "import", SAMPLES, "--db", str(db)]) == 0
    assert run(["report", "--hosts", str(db), "--out", str(tmp_path / "r.html")]) == 0
    assert "8 hosts" in (tmp_path / "r.html").read_text()


def test_report_bad_input_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvendor: GenuineIntel\nkernel: '6.1'\nmsrs: {IA32_VMX_NOPE: 1}\n")
    assert run(["report", "--hosts", str(bad), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:4: msrs.IA32_VMX_NOPE") and err.count("\n") == 1
    assert not (tmp_path / "r.html").exists()


# =========================================================================== real browser

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _png_colours(data: bytes) -> int:
    """Distinct RGB colours of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        prev = line
        if y % 4 == 0:
            for x in range(0, width, 2):
                colours.add(bytes(line[x * bpp:x * bpp + 3]))
    return len(colours)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path: Path, fleet_file: Path) -> None:
    browser = _chromium()
    if browser is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    out = tmp_path / "report.html"
    assert run(["report", "--hosts", str(fleet_file), "--out", str(out)]) == 0
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"]
    png = tmp_path / "shot.png"
    shot = subprocess.run(common + ["--enable-logging=stderr", "--v=0", f"--screenshot={png}", out.as_uri()],
                          capture_output=True, text=True, timeout=60, check=False)
    assert png.exists(), shot.stderr[-2000:]
    console = [ln for ln in shot.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not [ln for ln in console if "error" in ln.lower() or "Uncaught" in ln], console
    dom = subprocess.run(common + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=60,
                         check=False)
    assert 'data-rendered="ok"' in dom.stdout, (dom.stdout[:300], dom.stderr[-2000:])
    assert _png_colours(png.read_bytes()) > 12   # a heatmap, not a blank page
