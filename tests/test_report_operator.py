"""The fleet report as an operator reads it (issue 17): labels they recognise, counts in hosts and pools, one
line per reason, each pool's answer, and a link from every blocked or unsafe cell to what decides it.

The inventory is built by the real ``fleet import`` from bundled profiles in two pools (hand-written table):

    web:  web-1 (i7-6700K, family 6 model 94 = Skylake in intel-family.h, kernel 6.3.0)
          web-2 (the same CPU on 5.10.50)
    misc: amd-1 (AMD EPYC, no eVMCS), nonest-1 and nonest-2 (i7-6700K with nested=0)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cli_helpers import Run, cli_runner
from inventory_helpers import build_inventory
from needs import need_program


POOLS: dict[str, list[tuple[str, str, str | None]]] = {
    "web": [("skylake-6.3", "web-1", "6.3.0"), ("skylake-6.3", "web-2", "5.10.50")],
    "misc": [("epyc-amd-6.6", "amd-1", None), ("skylake-nested-off-6.1", "nonest-1", None),
             ("skylake-nested-off-6.1", "nonest-2", None)],
}


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    return cli_runner(capsys, monkeypatch)


@pytest.fixture
def report(tmp_path: Path, run: Run) -> str:
    db = build_inventory(run, tmp_path, POOLS)
    out = tmp_path / "r.html"
    rc, _, err = run("report", "--hosts", db, "--out", str(out))
    assert rc == 0, err
    return out.read_text(encoding="utf-8")


def _visible_labels(text: str) -> list[str]:
    """The text of every chart axis label, without its tooltip."""
    return [re.sub(r"<title>.*?</title>", "", m) for m in re.findall(r'class="glabel"[^>]*>(.*?)</text>', text)]


def test_axis_labels_are_what_an_operator_recognises(report: str) -> None:
    labels = _visible_labels(report)
    assert labels, "no axis labels"
    # Generation (intel-family.h model 94 = Skylake), kernel series, knobs, host count; never a bare group id.
    for expected in ("Skylake 6.3 ×1", "Skylake 5.10 ×1", "Skylake 6.1 nested=0 ×2"):
        assert expected in labels, (expected, sorted(set(labels)))
    assert not [x for x in labels if re.fullmatch(r"G\d+", x)]
    # The group id is still there, as the tooltip.
    assert re.search(r'class="glabel"[^>]*data-tip="G\d+: ', report)


def test_counts_are_hosts_and_pools_not_pairs(report: str) -> None:
    assert "5 hosts in 2 pools" in report
    design_table = report.split("Design comparison")[1].split("</table>")[0]
    assert " hosts<br><small>" in design_table
    # Host pairs only on request (inside a <details>), never as the table's numbers.
    assert "the same in ordered host pairs" in report


def test_reasons_are_aggregated(report: str) -> None:
    none_row = report.split("<td class=bad>none</td>")[1].split("</tr>")[0]
    # nonest-1 and nonest-2 share one profile; the AMD host has its own reason: two lines, each once.
    assert none_row.count("<li>") == 2
    assert none_row.count("nested=0") >= 1 and none_row.count("AuthenticAMD") == 1


def test_each_pool_has_its_answer(report: str) -> None:
    section = report.split("<h2>Pool answers</h2>")[1].split("</table>")[0]
    cpu = re.findall(r'<code class="cpu">(.*?)</code>', section)
    assert len(cpu) == 1                                  # pool web has an answer; misc has none
    assert cpu[0].startswith("max,vmx=on,") and "hv-evmcs=on" in cpu[0]
    assert "<span class=bad>no answer</span>" in section


def test_blocked_and_unsafe_cells_link_to_their_reason(report: str) -> None:
    links = re.findall(r'<a href="#(why-[^"]+)"><rect ', report)
    assert links, "no blocked or unsafe cell"             # web-2 (5.10.50) -> web-1 (6.3) is unsafe
    for target in links:
        assert f'<li id="{target}">' in report, target
    reason = report.split('<li id="' + links[0] + '">')[1].split("</li>")[0]
    assert re.search(r"vmx-[a-z0-9-]+", reason), reason   # names the features ...
    assert "filter" in reason or "refuses" in reason       # ... and the layer or refusal that decides


@pytest.mark.browser
def test_labels_render_in_headless_chromium(report: str, tmp_path: Path) -> None:
    browser = need_program("chromium", "Debian: apt-get install chromium")
    page = tmp_path / "r.html"
    page.write_text(report, encoding="utf-8")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False)
    assert 'data-rendered="ok"' in dom.stdout, dom.stderr[-2000:]
    assert "Skylake 6.1 nested=0 ×2" in _visible_labels(dom.stdout)
