"""Model cards and replays of versions registered with `log_checkpoint`: the description and
README.md say the same, the replay is a real animated GIF of the env, an env that cannot
render is skipped with a note, and a frozen MeanStdFilter is said so."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from PIL import Image

from rllib_mlflow import log_checkpoint
from rllib_mlflow.play.replay import MAX_FRAMES, WIDTH
from tests import envs
from tests.cards import assert_card, assert_card_and_replay

pytestmark = pytest.mark.slow


def _register(checkpoint: str, name: str, uri: str, video: bool):
    (version,) = log_checkpoint(
        checkpoint, name, formats=["onnx"], tracking_uri=uri, video=video,
        metrics={"env_runners": {"episode_return_mean": 12.5}},
    )  # fmt: skip
    return version


def _download(client: MlflowClient, version, path: str, directory) -> str:
    import mlflow

    root = client.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    return mlflow.artifacts.download_artifacts(
        artifact_uri=f"{root}/{path}", dst_path=str(directory), tracking_uri=client.tracking_uri
    )


def test_cards_and_replays_from_log_checkpoint(trained_checkpoint, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)

    cartpole = _register(trained_checkpoint("ppo_cartpole").path, "carded", uri, video=True)
    card = assert_card_and_replay(client, cartpole)
    assert "PPO on CartPole-v1, training iteration 2" in card
    assert "| training return | 12.5 |" in card and "not evaluated yet" in card
    readme = open(_download(client, cartpole, "README.md", tmp_path / "readme")).read()
    assert readme == card.replace(
        card.split("](")[1].split(")")[0], "replay.gif"
    )  # the same card, the replay linked relative to the model's files
    gif = Image.open(_download(client, cartpole, "replay.gif", tmp_path / "gif"))
    assert gif.format == "GIF" and gif.width == WIDTH and 1 < gif.n_frames <= MAX_FRAMES + 1

    meanstd = _register(trained_checkpoint("ppo_meanstd").path, "filtered", uri, video=False)
    assert "MeanStdFilter) is frozen at this checkpoint" in assert_card(client, meanstd)

    no_render = _register(trained_checkpoint("ppo_widebox").path, "no-render", uri, video=True)
    card = assert_card(client, no_render)
    tags = client.get_model_version("no-render", no_render.version).tags
    assert tags["replay"].startswith(f"skipped: {envs.WIDE_BOX}")
    assert f"*No replay: {envs.WIDE_BOX}" in card and "![replay" not in card
    assert "`Box(shape=(3,), float32)`" in card  # its action space
