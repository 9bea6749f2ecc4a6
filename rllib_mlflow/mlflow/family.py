"""What all the versions of a registered model add up to, kept current at every
registration without listing them: the count, the trials, the training-iteration range,
the algorithms and envs.

Each version registered is created with the summary of the versions before it, in its
`rllib_mlflow.family` tag (JSON, with the highest version number it counts): the newest
summary plus the versions after it, read in one query of the newest versions whatever the
count. The summary up to any version is its tag plus the versions after what it counts
(normally itself). It depends only on what is registered, so processes or hosts registering
at once cannot lose one another's counts. A model without such tags (registered by an older
release, or by other tools) is counted once in full. The summary's text is the registered
model's `rllib_mlflow.summary` tag (see `publish` for how often); pruning writes a full
count on the newest version left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from rllib_mlflow import names
from rllib_mlflow.mlflow.client import registry_writer
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.versions import iter_versions, newest_versions

if TYPE_CHECKING:
    from mlflow import MlflowClient

# The newest versions read to find the previous summary: more than registrations in flight.
WINDOW = 20
LIVE_LIMIT = 100  # versions up to which (twice) every registration rewrites the summary tag
MAX_TRIALS = 128  # trial ids kept (the tag stays small); beyond, the count says "over"


@dataclass(frozen=True)
class Summary:
    through: int = 0  # the highest version number counted
    count: int = 0
    trials: tuple[str, ...] = ()
    more_trials: bool = False
    iterations: tuple[int, int] | None = None
    envs: tuple[str, ...] = field(default=())  # "PPO on CartPole-v1"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Summary:
        data = json.loads(text)
        iterations = data.get("iterations")
        return cls(
            through=int(data["through"]),
            count=int(data["count"]),
            trials=tuple(data.get("trials", ())),
            more_trials=bool(data.get("more_trials")),
            iterations=None if iterations is None else (int(iterations[0]), int(iterations[1])),
            envs=tuple(data.get("envs", ())),
        )

    def trial_count(self) -> str:
        return f"over {len(self.trials)}" if self.more_trials else str(len(self.trials))

    def text(self, latest: str | None = None, best: str | None = None) -> str:
        """One line for the registered model's summary tag."""
        span = self.iterations
        parts = [
            f"{self.count} version(s) from {self.trial_count()} trial(s)",
            *(() if span is None else (f"training iterations {span[0]}–{span[1]}",)),
            *(() if not self.envs else (", ".join(self.envs),)),
            *(() if latest is None else (f"latest v{latest}",)),
            *(() if best is None else (f"best v{best}",)),
        ]
        return "; ".join(parts)


def add(summary: Summary, versions: Iterable) -> Summary:
    """`summary` with `versions` counted (those it counts already are skipped)."""
    trials, more = list(summary.trials), summary.more_trials
    envs, span = set(summary.envs), summary.iterations
    count, through = summary.count, summary.through
    for version in versions:
        number = int(version.version)
        if number <= summary.through:
            continue
        tags = version.tags
        count, through = count + 1, max(through, number)
        trial = tags.get(names.VERSION_TAG_TRIAL_ID) or ""
        if trial not in trials:
            more = more or len(trials) >= MAX_TRIALS
            trials += [] if more else [trial]
        envs.add(f"{tags.get(names.VERSION_TAG_ALGORITHM, '?')} on "
                 f"{tags.get(names.VERSION_TAG_ENV_ID, '?')}")  # fmt: skip
        iteration = _iteration(tags)
        if iteration is not None:
            span = (iteration, iteration) if span is None else (
                min(span[0], iteration), max(span[1], iteration))  # fmt: skip
    return replace(summary, through=through, count=count, trials=tuple(trials),
                   more_trials=more, iterations=span, envs=tuple(sorted(envs)))  # fmt: skip


def summarize(versions: Iterable) -> Summary:
    """The summary of all of `versions` (a full count)."""
    return add(Summary(), versions)


def so_far(mlflow_client: RegistryClient, name: str) -> Summary:
    """The summary of the versions registered so far: what a new version is created with
    (as a tag of `create_model_version`: MLflow's server reads every version of the model
    to check each tag written afterwards, whether it is a prompt's)."""
    listed = newest_versions(mlflow_client, name, WINDOW)
    return _count(mlflow_client, name, listed, complete=len(listed) < WINDOW, upto=None)


def through(mlflow_client: RegistryClient, name: str, version) -> Summary:
    """The summary of the versions up to `version` (just registered), itself included."""
    number = int(version.version)
    listed = newest_versions(mlflow_client, name, WINDOW)
    complete = len(listed) < WINDOW
    listed = [v for v in listed if int(v.version) <= number]
    if all(int(v.version) != number for v in listed):
        listed.append(version)  # not listed yet (a replica that lags): count it anyway
    return _count(mlflow_client, name, listed, complete=complete, upto=number)


def publish(mlflow_client: MlflowClient, name: str, summary: Summary, *, latest: str, best) -> bool:
    """Write `summary` as the registered model's summary tag when it is due: at every
    registration up to twice `LIVE_LIMIT` versions, then at every (count // LIVE_LIMIT)th.
    MLflow's server reads every version to write a registered model's tag, so this keeps
    the cost per registration constant on average; the tag names the version it counted to."""
    if summary.count > LIVE_LIMIT and summary.count % (summary.count // LIVE_LIMIT):
        return False
    text = summary.text(latest=str(latest), best=best and str(best))
    registry_writer(mlflow_client).set_registered_model_tag(name, names.MODEL_TAG_SUMMARY, text)
    return True


def recount(mlflow_client: MlflowClient, name: str, versions: list, *, best) -> None:
    """Write a full count of `versions` (all of the model's) on the newest of them, and as
    the model's summary tag (after a prune, or with the family card)."""
    if not versions:
        return
    newest = str(max(int(v.version) for v in versions))
    summary = summarize(versions)
    writer = registry_writer(mlflow_client)
    writer.set_model_version_tag(name, newest, names.VERSION_TAG_FAMILY, summary.to_json())
    text = summary.text(latest=newest, best=best and str(best))
    writer.set_registered_model_tag(name, names.MODEL_TAG_SUMMARY, text)


def _count(
    mlflow_client: RegistryClient, name: str, listed: list, *, complete: bool, upto: int | None
):
    """The newest summary among `listed` (the newest versions) plus the versions after it;
    without one, and more versions than the window, a full count (once per model)."""
    base = _newest_summary(listed)
    if base is None and not complete:
        bound = [] if upto is None else [f"version_number <= {upto}"]
        base = summarize(iter_versions(mlflow_client, [f"name = '{name}'", *bound]))
    return add(base or Summary(), listed)


def _newest_summary(listed: list) -> Summary | None:
    for version in sorted(listed, key=lambda v: int(v.version), reverse=True):
        text = version.tags.get(names.VERSION_TAG_FAMILY)
        if text:
            try:
                return Summary.from_json(text)
            except (ValueError, KeyError, TypeError, IndexError):
                return None  # not ours to trust: count again
    return None


def _iteration(tags: dict[str, str]) -> int | None:
    try:
        return int(tags[names.VERSION_TAG_ITERATION])
    except (KeyError, ValueError):
        return None
