"""Checks shared by the tests of every way a version is registered: its card and replay."""

from __future__ import annotations

from mlflow import MlflowClient


def model_files(client: MlflowClient, version) -> set[str]:
    model_id = getattr(version, "model_id", None) or version.source.removeprefix("models:/")
    return {f.path for f in client.list_logged_model_artifacts(model_id)}


def assert_card(client: MlflowClient, version) -> str:
    """The version's description is its card, and README.md is in its LoggedModel."""
    current = client.get_model_version(version.name, str(version.version))
    card = current.description or ""
    iteration = current.tags["training_iteration"]
    assert f", training iteration {iteration}" in card, card
    assert f'load_policy("models:/{version.name}/{version.version}")' in card
    assert f"mlflow models serve -m models:/{version.name}/{version.version}" in card
    assert "download_checkpoint" in card
    assert {"README.md", "MLmodel"} <= model_files(client, current)
    family = client.get_registered_model(version.name).description or ""
    assert f"**{version.name}**" in family and "version(s)" in family
    return card


def assert_card_and_replay(client: MlflowClient, version) -> str:
    """Also a replay: replay.gif in the LoggedModel, shown on the card."""
    card = assert_card(client, version)
    current = client.get_model_version(version.name, str(version.version))
    assert current.tags.get("replay") == "replay.gif", current.tags
    assert "replay.gif" in model_files(client, current)
    assert "![replay of one episode" in card
    return card
