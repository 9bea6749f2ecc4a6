"""What all the versions of a registered model add up to, kept current at every
registration without listing them: the count, the trials, the training-iteration range,
the algorithms and envs.

Each version registered carries the summary of the versions up to it, in its
`rllib_mlflow.family` tag (JSON, with the highest version number it counts). A new
version's summary is the newest earlier summary plus the versions after it (normally just
the new one), read in one query of the newest versions whatever the count. It depends only
on what is registered, so processes or hosts registering at once cannot lose one another's
counts. A model without such tags (registered by an older release, or by other tools) is
counted once in full. The newest summary's text is the registered model's
`rllib_mlflow.summary` tag; pruning writes a fresh summary on the newest version left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

from rllib_mlflow import names
from rllib_mlflow.mlflow.client import registry_writer
from rllib_mlflow.mlflow.versions import iter_versions, newest_versions

# The newest versions read to find the previous summary: more than registrations in flight.
WINDOW = 20
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


def advance(mlflow_client, name: str, version, *, best: str | None = None) -> Summary:
    """Count `version` (just registered) into the family summary; write the summary on it
    and the registered model's summary tag. A few queries, whatever the count."""
    number = int(version.version)
    listed = newest_versions(mlflow_client, name, WINDOW)
    newest = [v for v in listed if int(v.version) <= number]
    if all(int(v.version) != number for v in newest):
        newest.append(version)  # not listed yet (a replica that lags): count it anyway
    base = _previous_summary(newest, number)
    if base is None and len(listed) >= WINDOW:  # none in the window: count them all, once
        summary = add(summarize(iter_versions(mlflow_client, [_before(name, number)])), newest)
    else:
        summary = add(base or Summary(), newest)
    latest = max((int(v.version) for v in listed), default=number)
    write(mlflow_client, name, str(number), summary, best=best, newest=latest <= number)
    return summary


def write(mlflow_client, name: str, number: str, summary: Summary, *, best: str | None,
          newest: bool = True) -> None:  # fmt: skip
    """Record `summary` on version `number`, and (when it is the newest) as the model's tag."""
    writer = registry_writer(mlflow_client)
    writer.set_model_version_tag(name, number, names.VERSION_TAG_FAMILY, summary.to_json())
    if newest:
        text = summary.text(latest=number, best=best)
        writer.set_registered_model_tag(name, names.MODEL_TAG_SUMMARY, text)


def recount(mlflow_client, name: str, versions: list, *, best) -> None:
    """Write a full count of `versions` (all of the model's) on the newest of them."""
    if versions:
        newest = str(max(int(v.version) for v in versions))
        write(mlflow_client, name, newest, summarize(versions), best=best and str(best))


def _previous_summary(newest: list, number: int) -> Summary | None:
    for version in sorted(newest, key=lambda v: int(v.version), reverse=True):
        text = version.tags.get(names.VERSION_TAG_FAMILY)
        if int(version.version) < number and text:
            try:
                return Summary.from_json(text)
            except (ValueError, KeyError, TypeError, IndexError):
                return None  # not ours to trust: count again
    return None


def _before(name: str, number: int) -> str:
    return f"name = '{name}' AND version_number < {number}"


def _iteration(tags: dict[str, str]) -> int | None:
    try:
        return int(tags[names.VERSION_TAG_ITERATION])
    except (KeyError, ValueError):
        return None
