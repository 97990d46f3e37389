"""A real browser against the MLflow UI that `sweeplab ui` serves for a finished sweep."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from servers import free_port, require, wait_healthy

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    require(CHROMIUM is not None, "Debian's chromium is not installed (make system-deps installs it)")
    out = tmp_path_factory.mktemp("browser-sweep")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    run = subprocess.run([*SWEEPLAB, "sweep", "smoke", f"output_dir={out}", "data.subset=500", "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ui(finished_sweep):
    port = free_port()
    proc = subprocess.Popen([*SWEEPLAB, "ui", f"output_dir={finished_sweep}", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn workers
    proc.wait(timeout=30)


def test_mlflow_ui_shows_the_sweep_with_nested_trials_and_compares_two(ui, finished_sweep, tmp_path):
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(f"sqlite:///{finished_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")[0]
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    shots = Path(os.environ.get("SWEEPLAB_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        # the experiment list names the sweep's experiment
        page.goto(f"{ui}/#/experiments?workflowType=machine_learning")
        page.get_by_text("smoke", exact=True).first.wait_for(timeout=60_000)

        # the runs table of the experiment: the sweep's parent run, expandable to its trials
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
        page.get_by_text(parent.info.run_name).first.wait_for(timeout=60_000)
        # the expander of a parent run sits in its Run Name cell
        name_cell = page.locator("[role=gridcell]", has=page.get_by_text(parent.info.run_name, exact=True))
        name_cell.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        page.get_by_text(children[0].info.run_name).first.wait_for(timeout=60_000)
        page.screenshot(path=str(shots / "mlflow_sweep_runs.png"), full_page=True)

        # comparing two trials shows their differing params side by side
        a, b = children[0], children[1]
        page.goto(f'{ui}/#/compare-runs?runs=["{a.info.run_id}","{b.info.run_id}"]'
                  f'&experiments=["{experiment.experiment_id}"]&workflowType=machine_learning')
        page.get_by_text("optimizer.lr").first.wait_for(timeout=60_000)
        body = page.inner_text("body")
        for run in (a, b):
            assert run.info.run_name in body
        page.screenshot(path=str(shots / "mlflow_compare_trials.png"), full_page=True)
        browser.close()
    assert (shots / "mlflow_sweep_runs.png").stat().st_size > 20_000


def test_the_report_draws_its_interactive_study_figures_without_internet(finished_sweep, tmp_path):
    """report.html from the parent run, opened from disk with every network request refused: plotly.js is
    inside the page, so each Optuna figure of the study is drawn (an SVG per figure)."""
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(f"sqlite:///{finished_sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`sweeplab.kind` = 'sweep'")[0]
    report = Path(client.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path)))
    refused: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.route("http*://**", lambda route: (refused.append(route.request.url), route.abort()))
        page.goto(report.as_uri())
        page.wait_for_selector("div.optuna .main-svg", timeout=60_000)
        figures = page.locator("div.optuna").count()
        drawn = page.locator("div.optuna .js-plotly-plot").count()
        browser.close()
    assert figures >= 3 and drawn == figures, (figures, drawn)
    assert refused == []  # nothing was fetched from outside the page
