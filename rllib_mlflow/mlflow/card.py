"""Model cards: what a person reads about a version, and about the registered model.

A version's card is its description in the registry (Markdown, which the MLflow UI renders)
and the same text as `README.md` in its LoggedModel: the algorithm, env, trial, training
iteration, env steps, training and evaluation return, parity result, formats, spaces, the
replay when one was recorded, and snippets to load, serve and resume it. The registered
model's description summarises the family: how many versions, the best, the latest and
what the other aliases name. Registration rewrites it while the model has at most
`LIVE_CARD_LIMIT` versions (it reads them all); beyond, `prune` and `evaluate` rewrite it,
and the one-line summary tag (see `mlflow.family`) says how many there are.

Cards are written from the version tags and the version's `policy.json`, so that anything
that changes the facts (registration, `evaluate`, `prune`) rewrites them the same way.
Nothing here reads the tracking URI into a card: it may carry credentials.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from typing import Any

from rllib_mlflow import names
from rllib_mlflow.mlflow import card_format as fmt
from rllib_mlflow.mlflow import family
from rllib_mlflow.mlflow.client import registry_writer
from rllib_mlflow.mlflow.versions import iter_versions, logged_model_id

logger = logging.getLogger(__name__)

_ITERATION_ALIAS = re.compile(rf"^{names.ITERATION_ALIAS_PREFIX}\d+$")
_MISSING = "–"
LIVE_CARD_LIMIT = 100  # versions up to which registration rewrites the family card


# -- writing cards ---------------------------------------------------------------------------


def publish_new_version(
    mlflow_client, name: str, version, exported, *, best: str | None = None
) -> None:
    """Card of a version just registered from `exported` (an `ExportedPolicy`), the family
    summary, and the family card while the model is small. A failure here is logged, never
    raised: the version is registered, and `rllib-mlflow evaluate` rewrites cards."""
    try:
        publish_version_card(mlflow_client, name, version.version, policy=exported.metadata)
        summary = family.through(mlflow_client, name, version)
        family.publish(mlflow_client, name, summary, latest=version.version, best=best)
        if summary.count <= LIVE_CARD_LIMIT:
            publish_family_card(mlflow_client, name)
    except Exception as error:
        logger.warning("No card for %s version %s: %s", name, version.version, error)


def publish_version_card(mlflow_client, name: str, number, *, policy: dict | None = None) -> str:
    """Write version `number`'s card: its description and README.md in its LoggedModel."""
    version = mlflow_client.get_model_version(name, str(number))
    policy = policy if policy is not None else _download_policy(mlflow_client, version)
    model_id = logged_model_id(version)
    description = version_card(version, policy, image_url=replay_url(model_id))
    registry_writer(mlflow_client).update_model_version(name, str(number), description)
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_card_") as directory:
        readme = os.path.join(directory, names.README_FILE)
        with open(readme, "w") as stream:
            stream.write(version_card(version, policy, image_url=names.REPLAY_FILE))
        mlflow_client.log_model_artifact(model_id, readme)
    return description


def publish_family_card(mlflow_client, name: str) -> str:
    """Write the registered model's description from all its versions and aliases (a full
    listing: `prune`, `evaluate`, and registration up to `LIVE_CARD_LIMIT` versions), and
    a fresh family summary on the newest version."""
    versions = list(iter_versions(mlflow_client, [f"name = '{name}'"]))
    aliases = dict(mlflow_client.get_registered_model(name).aliases)
    description = family_card(name, versions, aliases)
    registry_writer(mlflow_client).update_registered_model(name, description)
    family.recount(mlflow_client, name, versions, best=aliases.get(names.ALIAS_BEST))
    return description


def attach_replay(mlflow_client, name: str, number, replay, *, seed: int) -> None:
    """Log a recorded replay (an `evaluate.replay.Replay`: its GIF, or why there is none;
    recording is the evaluate tier's) with the version's LoggedModel."""
    version = mlflow_client.get_model_version(name, str(number))
    writer = registry_writer(mlflow_client)
    if replay.path is not None:
        mlflow_client.log_model_artifact(logged_model_id(version), str(replay.path))
        value = names.REPLAY_FILE
        writer.set_model_version_tag(name, str(number), names.VERSION_TAG_REPLAY_SEED, str(seed))
    else:
        value = f"skipped: {replay.skipped}"[:500]
    writer.set_model_version_tag(name, str(number), names.VERSION_TAG_REPLAY, value)


def replay_url(model_id: str | None) -> str:
    """The replay as the tracking server serves it, relative to the UI's address (so it works
    behind a path prefix too); without a LoggedModel (older servers), its bare file name."""
    files = f"ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files"
    return f"{files}?artifact_file_path={names.REPLAY_FILE}" if model_id else names.REPLAY_FILE


def _download_policy(mlflow_client, version) -> dict[str, Any]:
    """The version's policy.json (spaces, preprocessing, parity), or {} if unreadable."""
    import mlflow.artifacts

    try:
        root = mlflow_client.get_logged_model(logged_model_id(version)).artifact_location
        with tempfile.TemporaryDirectory(prefix="rllib_mlflow_card_") as directory:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/data/policy.json",
                dst_path=directory,
                tracking_uri=mlflow_client.tracking_uri,
            )
            with open(path) as stream:
                return json.load(stream)
    except Exception as error:  # a card without spaces beats no card
        logger.warning("Could not read policy.json of version %s: %s", version.version, error)
        return {}


# -- the text --------------------------------------------------------------------------------


def version_card(version, policy: dict[str, Any], *, image_url: str) -> str:
    """The Markdown card of one version (pure: from the version's tags and policy.json)."""
    tags, name, number = version.tags, version.name, version.version
    iteration = tags.get(names.VERSION_TAG_ITERATION, "?")
    algorithm = tags.get(names.VERSION_TAG_ALGORITHM, "RLlib")
    env_id = tags.get(names.VERSION_TAG_ENV_ID, "?")
    trial = tags.get(names.VERSION_TAG_TRIAL_NAME) or tags.get(names.VERSION_TAG_TRIAL_ID)
    rows = [
        ("trial", fmt.code(trial)),
        ("training iteration", iteration),
        ("env steps", fmt.count(tags.get("num_env_steps_sampled_lifetime"))),
        ("training return", fmt.number(tags.get("episode_return_mean"))),
        ("evaluation return", _evaluation(tags, name, number)),
        ("parity with RLlib", _parity(tags, policy)),
        ("int8 agreement", _int8_agreement(policy)),
        (
            "formats",
            ", ".join(f"`{f}`" for f in fmt.split_list(tags.get(names.VERSION_TAG_FORMATS))),
        ),
        ("observation space", fmt.code(fmt.space_text(policy.get("observation_space")))),
        ("action space", fmt.code(fmt.space_text(policy.get("action_space")))),
        ("module", fmt.code(tags.get(names.VERSION_TAG_MODULE_ID))),
        ("environment", fmt.env_text(tags)),
    ]
    lines = [
        _headline(algorithm, env_id, iteration, tags),
        "",
        "| | |",
        "|---|---|",
        *(f"| {label} | {value or _MISSING} |" for label, value in rows),
        "",
        *_replay_lines(tags, image_url, name, number),
        *_filter_note(policy),
        *_snippets(name, number, iteration),
        *_litert_snippet(policy),
    ]
    return "\n".join(lines) + "\n"


def _headline(algorithm: str, env_id: str, iteration: str, tags: dict[str, str]) -> str:
    """Plain text: the UI's list of versions shows the description's first characters."""
    parts = [f"{algorithm} on {env_id}, training iteration {iteration}"]
    if tags.get("episode_return_mean") is not None:
        parts.append(f"training return {fmt.number(tags['episode_return_mean'])}")
    evaluation = _evaluation(tags, None, None)
    if evaluation:
        parts.append(f"evaluation return {evaluation}")
    return " · ".join(parts)


def family_card(name: str, versions: list, aliases: dict[str, Any]) -> str:
    """The Markdown summary of a registered model's versions (pure)."""
    if not versions:
        return f"**{name}**: no versions left. Registered by rllib-mlflow.\n"
    by_number = {str(v.version): v for v in versions}
    latest = max(versions, key=lambda v: int(v.version))
    summary = family.summarize(versions)
    span = summary.iterations
    span = f", training iterations {span[0]}–{span[1]}" if span else ""
    lines = [
        f"**{name}**: {', '.join(summary.envs)}; {summary.count} version(s) from "
        f"{summary.trial_count()} trial(s){span}. Each version is one RLlib checkpoint "
        "exported to TF SavedModel / Keras `.h5` / ONNX by rllib-mlflow; its description is "
        "its card.",
        "",
        "| alias | version | training iteration | training return | evaluation return |",
        "|---|---|---|---|---|",
    ]
    named = sorted((a, str(v)) for a, v in aliases.items() if not _ITERATION_ALIAS.match(a))
    named = [(f"`{alias}`", number) for alias, number in named]
    named.append(("latest version", str(latest.version)))
    for alias, number in named:
        version = by_number.get(number)
        if version is None:
            continue
        tags = version.tags
        lines.append(
            f"| {alias} | {number} | {tags.get(names.VERSION_TAG_ITERATION, _MISSING)} | "
            f"{fmt.number(tags.get('episode_return_mean')) or _MISSING} | "
            f"{_evaluation(tags, None, None) or _MISSING} |"
        )
    lines += [
        "",
        f"Beyond {LIVE_CARD_LIMIT} versions this summary is rewritten by `rllib-mlflow prune` "
        f"and `evaluate`; the `{names.MODEL_TAG_SUMMARY}` tag keeps counting.",
        "",
        f'Load one without Ray: `rllib_mlflow.load_policy("models:/{name}@best")`, '
        f'`"models:/{name}@iter-N"` (the latest version of training iteration N), or '
        f'`rllib_mlflow.load_policy("{name}", training_iteration=N, trial=...)`. Compare them: '
        f"`rllib-mlflow versions {name}`; play them: `rllib-mlflow evaluate {name} --video`.",
    ]
    return "\n".join(lines) + "\n"


def _replay_lines(tags: dict[str, str], image_url: str, name: str, number) -> list[str]:
    replay = tags.get(names.VERSION_TAG_REPLAY)
    if replay == names.REPLAY_FILE:
        seed = tags.get(names.VERSION_TAG_REPLAY_SEED, "0")
        return [f"![replay of one episode, seed {seed}]({image_url})", "",
                f"*Replay: one episode from `env.reset(seed={seed})`, "
                f"[{names.REPLAY_FILE}]({image_url}).*", ""]  # fmt: skip
    if replay:
        return [f"*No replay: {replay.removeprefix('skipped: ')}.*", ""]
    return [f"*No replay yet: `rllib-mlflow evaluate {name} --versions {number} --video`.*", ""]


def _filter_note(policy: dict[str, Any]) -> list[str]:
    if any(s.get("type") == "mean_std_filter" for s in policy.get("preprocessing", [])):
        return [
            "The observation filter (MeanStdFilter) is frozen at this checkpoint; RLlib keeps "
            "updating it while it acts, so long runs of RLlib itself may drift from this export.",
            "",
        ]
    return []


def _snippets(name: str, number, iteration: str) -> list[str]:
    uri = f"models:/{name}/{number}"
    return [
        "**Load** (neither Ray nor torch; `MLFLOW_TRACKING_URI` set to this server):",
        "```python",
        "import rllib_mlflow",
        f'policy = rllib_mlflow.load_policy("{uri}")',
        f'# or: rllib_mlflow.load_policy("{name}", training_iteration={iteration})',
        "actions = policy.compute_actions(observations)  # a batch of raw observations",
        "```",
        "**Serve**:",
        "```bash",
        f"mlflow models serve -m {uri} --env-manager local -p 5001",
        "```",
        "**Resume training** (Ray):",
        "```python",
        "from ray.rllib.algorithms.algorithm import Algorithm",
        f'algo = Algorithm.from_checkpoint(rllib_mlflow.download_checkpoint("{uri}"))',
        "```",
    ]


def _evaluation(tags: dict[str, str], name: str | None, number) -> str | None:
    mean = tags.get(names.VERSION_TAG_EVAL_RETURN_MEAN)
    if mean is None:
        return None if name is None else "not evaluated yet"
    text = f"{fmt.number(mean)} ± {fmt.number(tags.get(names.VERSION_TAG_EVAL_RETURN_STD, '0'))}"
    episodes = tags.get(names.VERSION_TAG_EVAL_EPISODES)
    return f"{text} ({episodes} episodes)" if episodes else text


def _parity(tags: dict[str, str], policy: dict[str, Any]) -> str | None:
    report = policy.get("parity")
    if report:
        verdict = "passed" if report.get("passed") else "FAILED"
        if report.get("failed"):  # those formats were not written
            verdict += f" by {', '.join(report['formats'])} ({', '.join(report['failed'])} refused)"
        return (
            f"{verdict}: max abs diff {report.get('max_abs_diff', 0):.2g} on "
            f"{report.get('observations', '?')} observations"
        )
    diff = tags.get(names.VERSION_TAG_PARITY)
    return f"max abs diff {diff}" if diff else "not verified"


def _int8_agreement(policy: dict[str, Any]) -> str | None:
    """The row only for versions that have, or were refused, `tflite_int8`."""
    report = (policy.get("quantized", {}).get("tflite_int8") or {}).get("agreement")
    if report:
        return (
            f"`tflite_int8` acts like RLlib on {100 * report['agreement']:.1f}% of "
            f"{report['observations']} observations ({report['source']})"
        )
    refused = policy.get("refused_formats", {}).get("tflite_int8")
    return f"`tflite_int8` refused: {refused}" if refused else None


def _litert_snippet(policy: dict[str, Any]) -> list[str]:
    files = policy.get("files", {})
    if not {"tflite", "tflite_int8"} & set(files):
        return []
    file = files.get("tflite") or files["tflite_int8"]
    return [
        "**On a device** (LiteRT, `pip install ai-edge-litert`; the file is in this model's "
        '`data/` folder; or `load_policy(..., backend="litert")`):',
        "```python",
        "from ai_edge_litert.interpreter import Interpreter",
        f'act = Interpreter(model_path="{file}").get_signature_runner("serving_default")',
        'actions = act(observations=observations)["actions"]  # float32 [batch, ...]',
        "```",
    ]
