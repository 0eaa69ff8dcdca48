"""The planner dashboard end to end: ``territoria dashboard`` served on 127.0.0.1 and driven in
headless Chromium (Debian's ``/usr/bin/chromium`` through playwright; ``.ci/run`` installs it).

The browser tests use the session's ``main_run`` (all communes, small models). Set
``TERRITORIA_DASHBOARD_SCREENSHOT=1`` to write the screenshot to ``docs/img/dashboard.png``
(the README's picture) instead of a temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from territoria.pipelines import dashboard as dash

CHROMIUM = Path("/usr/bin/chromium")
CLI = str(Path(sys.executable).parent / "territoria")
REPO = Path(__file__).resolve().parents[1]
DENAIN = "59172"
# a sandbox-less, quiet browser: no GPU, no QUIC, no first-run pages, no background traffic
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 180
# the first scenario waits for the engine: the run's features rebuilt from the official data
SCENARIO_TIMEOUT_S = 900


def _need_browser() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail("/usr/bin/chromium is missing: .ci/run installs it (apt-get install chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state != "0A" or int(p, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(addr)
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@contextmanager
def serve(run_dir: Path, log_path: Path, lang: str = "fr"):
    """``territoria dashboard`` on a free loopback port; the server is killed on exit."""
    port = _free_port()
    log = open(log_path, "wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    # its own process group: the server and any worker it spawned are stopped together
    proc = subprocess.Popen([CLI, "dashboard", "--out", str(run_dir), "--port", str(port), "--lang", lang],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"dashboard exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dashboard not up after {START_TIMEOUT_S} s: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield port, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def run_dir(request) -> Path:
    """The finished run the dashboard serves: the session's ``main_run`` (or, to iterate on the
    app, an existing run folder named by ``TERRITORIA_TEST_RUN_DIR``)."""
    existing = os.environ.get("TERRITORIA_TEST_RUN_DIR")
    if existing and not os.environ.get("CI"):
        return Path(existing)
    return request.getfixturevalue("main_run").run_json.parent


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.replace("\u00a0", " ").replace("\u202f", " ")).strip()


def _digits(s: str) -> int:
    return int(re.sub(r"\D", "", s))


def _metric(page, label: str) -> str:
    """The value of the streamlit metric whose label starts with ``label``."""
    m = page.locator('[data-testid="stMetric"]').filter(
        has=page.locator('[data-testid="stMetricLabel"]', has_text=label))
    return m.first.locator('[data-testid="stMetricValue"]').inner_text()


# --------------------------------------------------------------------------- without a browser
def test_missing_priorities_is_one_line_and_exit_2(tmp_path):
    res = subprocess.run([CLI, "dashboard", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr
    assert "priorities.csv" in lines[0] and "territoria run" in lines[0]


def test_launcher_binds_loopback_without_telemetry(tmp_path):
    (tmp_path / "priorities.csv").write_text("zone_code\n59172\n", encoding="utf-8")
    args = dash.streamlit_args(dash.check_run_dir(tmp_path))
    opts = dict(zip(args[2::2], args[3::2]))
    assert opts["--server.address"] == "127.0.0.1"
    assert opts["--browser.gatherUsageStats"] == "false" and opts["--server.headless"] == "true"
    assert opts["--server.enableStaticServing"] == "false"
    assert args[args.index("--") + 1:] == ["--out", str(tmp_path.resolve()), "--lang", "fr"]
    assert Path(args[1]).name == "dashboard_app.py" and Path(args[1]).is_file()
    assert dash.check_host("127.0.0.1") and dash.check_host("::1") and dash.check_host("localhost")
    assert not dash.check_host("0.0.0.0") and not dash.check_host("192.168.1.10")
    with pytest.raises(dash.DataError, match="--host"):
        dash.check_host("127.0.0.1; rm -rf /")


def test_filters_search_and_scenario_of_the_sliders():
    pri = pd.DataFrame({
        "zone_code": ["59172", "59178", "62041"], "zone_name": ["Denain", "Douchy-les-Mines", "Arras"],
        "department": ["59", "59", "62"], "epci": ["e1", "e1", "e2"], "priority_rank": [1, 2, 3],
        "priority_flag": [True, False, False], "flag_status": ["new", "", "exited"],
        "vulnerable_domains": ["economic, residential", "", "economic"],
        "domain_economic": [2.0, 0.1, 1.5],
    })
    assert dash.filter_ranking(pri, department="59")["zone_code"].tolist() == ["59172", "59178"]
    assert dash.filter_ranking(pri, domain="residential")["zone_code"].tolist() == ["59172"]
    assert dash.filter_ranking(pri, flag="flagged")["zone_code"].tolist() == ["59172"]
    assert dash.filter_ranking(pri, flag="exited", domain="economic")["zone_code"].tolist() == ["62041"]
    assert dash.search_zones(pri, "59172")["zone_name"].tolist() == ["Denain"]
    assert dash.search_zones(pri, "douchy les")["zone_code"].tolist() == ["59178"]
    from territoria.registry import load_registry

    reg = load_registry()
    sliders = dash.lever_sliders(reg, {"unemployment_rate", "n_gp", "gp_density", "median_income"}, "fr")
    assert {s.indicator for s in sliders} == {"unemployment_rate", "n_gp", "gp_density"}  # income is context
    row = pri.iloc[0]
    assert dash.make_scenario({"unemployment_rate": 0.0}, sliders, "zone", row) is None
    sc = dash.make_scenario({"unemployment_rate": -5.0, "gp_density": 50.0}, sliders, "epci", row, reg)
    assert sc.zones.epcis == ["e1"]
    assert {(c.indicator, c.add, c.multiply) for c in sc.changes} == {("unemployment_rate", -5.0, None),
                                                                      ("gp_density", None, 1.5)}
    assert dash.lever_texts(pd.Series({"top_levers_fr": "A (1 %) augmente le score de 0,5 ; B diminue"}), "fr") == \
        ["A (1 %) augmente le score de 0,5", "B diminue"]


def test_zone_series_against_department_median():
    pri = pd.DataFrame({"zone_code": ["a", "b", "c", "d"], "zone_name": ["A", "B", "C", "D"],
                        "department": ["59", "59", "59", "62"]})
    rows = [(z, p, "unemployment_rate", v) for z, vs in {"a": (20, 22), "b": (10, 12), "c": (12, 13), "d": (1, 1)}.items()
            for p, v in zip((2015, 2021), vs)]
    rows += [(z, p, "population", v) for z, vs in {"a": (100, 90), "b": (50, 55), "c": (10, 11)}.items()
             for p, v in zip((2015, 2021), vs)]
    series = pd.DataFrame(rows, columns=["zone_code", "period", "measure", "value"])
    s = dash.zone_series(series, pri, "a", ["unemployment_rate", "population"], "en")
    med = s[s["who"] == "department median"].set_index(["measure", "period"])["value"]
    own = s[s["who"] == "A (a)"].set_index(["measure", "period"])["value"]
    assert med[("unemployment_rate", 2021)] == 13 and own[("unemployment_rate", 2021)] == 22  # d is in 62
    # counts compared as an index, first year = 100: a 10 % fall against a 10 % rise
    assert own[("population", 2021)] == pytest.approx(90) and med[("population", 2021)] == pytest.approx(110)


# --------------------------------------------------------------------------- in the browser
@pytest.mark.slow
def test_dashboard_in_chromium_shows_denain_rank_levers_and_rescores(run_dir, tmp_path):
    _need_browser()
    from playwright.sync_api import expect, sync_playwright

    wait = {"timeout": 180_000}  # a shared 2-core machine: reruns of the app can take a while
    pri = dash.load_priorities(run_dir)
    denain = pri[pri["zone_code"] == DENAIN].iloc[0]
    rank = int(denain["priority_rank"])
    levers = dash.lever_texts(denain, "fr")
    assert levers, "Denain has top levers in the run's outputs"
    shot = (REPO / "docs" / "img" / "dashboard.png" if os.environ.get("TERRITORIA_DASHBOARD_SCREENSHOT")
            else tmp_path / "dashboard.png")

    with serve(run_dir, tmp_path / "server.log") as (port, _proc):
        # bound to the loopback address only: nothing listens on 0.0.0.0 or ::
        if Path("/proc/net/tcp").exists():
            assert _listening(port) == {"127.0.0.1"}
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 2400})
            try:
                page = ctx.new_page()
                page.set_default_timeout(wait["timeout"])
                page.goto(f"http://127.0.0.1:{port}/")
                expect(page.get_by_text("priorités territoriales")).to_be_visible(**wait)
                # the zone view, as a planner gets there: sidebar, then the search box
                page.locator('[data-testid="stSidebar"]').get_by_text("Zone", exact=True).click()
                box = page.get_by_label("Rechercher une commune (nom ou code INSEE)")
                box.fill(DENAIN)
                box.press("Enter")
                expect(page.get_by_role("heading", name=f"Denain ({DENAIN})")).to_be_visible(**wait)
                assert _digits(_metric(page, "Rang national")) == rank
                shown = _norm(page.locator(".st-key-levers").inner_text())
                for sentence in levers:
                    assert _norm(sentence) in shown, sentence
                # domain scores, indicators over time against the department, score points
                expect(page.locator('[data-testid="stVegaLiteChart"]')).to_have_count(3, **wait)
                expect(page.locator('[data-testid="stStatusWidget"]')).to_be_hidden(**wait)  # run over
                box.blur()
                page.wait_for_timeout(2000)  # let vega draw the charts before the picture
                page.screenshot(path=str(shot), full_page=True)

                # live scenario: the zone's first lever slider to its minimum, then re-rank
                page.locator('[data-testid="stSidebar"]').get_by_text("Scénario", exact=True).click()
                slider = page.locator('[data-testid="stForm"]').get_by_role("slider").first
                slider.focus()
                slider.press("Home")
                expect(slider).to_have_value(re.compile(r"^-"))
                page.get_by_role("button", name="Recalculer le classement").click()
                # the table's rows (streamlit first shows a skeleton), or an error
                rows = page.locator(".st-key-scenario_table tbody tr")
                failed = page.locator('[data-testid="stException"], [data-testid="stAlert"]')
                rows.first.or_(failed.first).wait_for(timeout=SCENARIO_TIMEOUT_S * 1000)
                assert not failed.count(), failed.all_inner_texts()
                after = _digits(_metric(page, "Rang national après scénario"))
                assert after != rank, "moving Denain's main lever must move its rank"
                moved = [_norm(t).split(" ") for t in rows.all_inner_texts()]
                denain_row = [r for r in moved if DENAIN in r]
                assert denain_row, moved  # Denain is listed with its rank before and after
                assert str(rank) in denain_row[0] and str(after) in denain_row[0]
            finally:
                ctx.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
