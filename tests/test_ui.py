"""The MLflow UI, seen in Debian's headless chromium: the registered model's versions with
their training_iteration tags and aliases, a version's model card with its replay, the
experiment's Models tab, and the evaluation plot. Screenshots go to
$RLLIB_MLFLOW_SCREENSHOTS (default: the test's tmp dir); docs/screenshots/ holds the ones
the README shows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from playwright.sync_api import sync_playwright

from rllib_mlflow import log_checkpoint
from rllib_mlflow.play.evaluation import EVAL_EXPERIMENT, evaluate
from tests.mlflow_server import start_tracking_server

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODEL = "ui-policy"
# Chromium's background services try to reach Google; the closed network refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def ui_server(trained_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    server = start_tracking_server(root / "server")
    try:
        checkpoints = [
            trained_checkpoint("ppo_cartpole"),
            trained_checkpoint("ppo_cartpole_shared"),
        ]
        for iteration, checkpoint in enumerate(checkpoints, start=1):
            log_checkpoint(
                checkpoint.path, MODEL, training_iteration=iteration, formats=["onnx"],
                metrics={"env_runners": {"episode_return_mean": 20.0 + iteration}},
                trial_id="ui_trial", trial_name="PPO_CartPole-v1_ui_trial",
                tracking_uri=server.uri, video=iteration == 1,
            )  # fmt: skip
        evaluate(
            MODEL, env="CartPole-v1", episodes=3, tracking_uri=server.uri, workers=1,
            move_alias=True, video=True,
        )  # fmt: skip
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    assert os.path.exists(CHROMIUM), "Debian's chromium is required: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_server):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    # Show the "Model training" side of the UI, without the assistant panel.
    page.goto(f"{ui_server.uri}/#/models")
    page.get_by_text("Model training", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    welcome = page.get_by_text("Try it now")  # the registry's first-visit dialog
    if welcome.count():
        welcome.first.click()
    page.get_by_text("Model training", exact=True).first.click()
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()
    yield page
    context.close()


def _screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("RLLIB_MLFLOW_SCREENSHOTS", tmp_path))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _open(page, url: str, *texts: str) -> str:
    page.goto(url)
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # the UI keeps polling, so "network idle" never comes
    return page.inner_text("body")


def test_registered_model_page_shows_versions_and_aliases(ui_server, page, tmp_path):
    body = _open(page, f"{ui_server.uri}/#/models/{MODEL}", "Version 2")
    assert "Version 1" in body and "Version 2" in body
    assert "best" in body and "eval-best" in body
    assert "2 version(s) from 1 trial(s)" in body  # the family's card
    page.screenshot(path=str(_screenshots(tmp_path) / "registered_model.png"), full_page=True)


def test_version_page_shows_training_iteration_tag(ui_server, page, tmp_path):
    body = _open(page, f"{ui_server.uri}/#/models/{MODEL}/versions/2", "training_iteration")
    assert "training_iteration" in body and "episode_return_mean" in body
    assert "eval.episode_return_mean" in body
    page.screenshot(path=str(_screenshots(tmp_path) / "model_version.png"), full_page=True)


def test_version_page_shows_the_model_card_and_the_replay(ui_server, page, tmp_path):
    page.set_viewport_size({"width": 1400, "height": 1500})  # the whole card
    body = _open(page, f"{ui_server.uri}/#/models/{MODEL}/versions/2", "evaluation return")
    assert "PPO on CartPole-v1, training iteration 2" in body
    assert "parity with RLlib" in body and "passed" in body
    assert "load_policy" in body and "mlflow models serve" in body
    assert "download_checkpoint" in body
    replay = page.locator("img[src*='replay.gif']").first
    replay.wait_for(timeout=60_000)
    replay.scroll_into_view_if_needed()
    page.wait_for_function(
        "(img) => img.complete && img.naturalWidth > 100", arg=replay.element_handle()
    )
    page.screenshot(path=str(_screenshots(tmp_path) / "model_card.png"), full_page=True)


def test_experiment_models_tab_lists_the_logged_models(ui_server, page, tmp_path):
    client = MlflowClient(tracking_uri=ui_server.uri)
    version = client.get_model_version(MODEL, "2")
    experiment_id = client.get_run(version.run_id).info.experiment_id
    body = _open(page, f"{ui_server.uri}/#/experiments/{experiment_id}/models", "iter-2")
    assert "iter-1" in body and "iter-2" in body
    page.screenshot(path=str(_screenshots(tmp_path) / "experiment_models.png"), full_page=True)


def test_evaluation_plot_is_visible(ui_server, page, tmp_path):
    client = MlflowClient(tracking_uri=ui_server.uri)
    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
    run = client.search_runs([experiment.experiment_id])[0]
    plot = f"evaluation_{MODEL}.png"
    url = (
        f"{ui_server.uri}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/artifacts"
    )
    _open(page, url, plot)
    page.get_by_text(plot).first.click()
    image = page.locator("img[src^='blob:']").first  # the artifact viewer shows a blob URL
    image.wait_for(timeout=60_000)
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 100", image.element_handle())
    page.screenshot(path=str(_screenshots(tmp_path) / "evaluation_plot.png"), full_page=True)
