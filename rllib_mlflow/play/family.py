"""A multi-agent family: the registered models ``NAME-<module_id>`` that the modules of
multi-agent checkpoints join (`register.registration`), played together in their env.

A checkpoint of the family is one version per module, of the same trial and training
iteration. Agents act with the module the mapping recorded at training names, where that
mapping is data (a dict, or RLlib's default that sends every agent to one module), else the
module of the agent's own id; `--agent-module AGENT=MODULE` (`agent_modules=`) adds to it
and wins. A mapping function is code: it was recorded by name, and is never run here.
"""

from __future__ import annotations

from typing import Any

from rllib_mlflow import names
from rllib_mlflow.errors import EnvCreationError
from rllib_mlflow.mlflow.versions import find_versions
from rllib_mlflow.play.episodes import ANY_AGENT, module_of
from rllib_mlflow.redaction import get_logger

logger = get_logger(__name__)


def members(mlflow_client: Any, name: str) -> dict[str, str]:
    """Module id -> registered model, for every ``NAME-<module_id>`` whose versions are of
    that module; {} when `name` has no such family."""
    prefix = f"{name}-"
    found = {}
    # LIKE's `_` matches any character: the prefix is checked again below.
    for model in mlflow_client.search_registered_models(f"name LIKE '{prefix}%'"):
        module = model.name[len(prefix) :]
        if not model.name.startswith(prefix) or not module:
            continue
        module_filter = f"tags.{names.VERSION_TAG_MODULE_ID} = '{module}'"
        query = f"name = '{model.name}' AND {module_filter}"
        if mlflow_client.search_model_versions(query, max_results=1):
            found[module] = model.name
    return dict(sorted(found.items()))


def checkpoints(mlflow_client: Any, family: dict[str, str], chosen: list) -> list[dict[str, Any]]:
    """For each version `chosen` of the family's first module, the version of every module
    from the same trial and iteration (module id -> version); a checkpoint that lacks a
    module (pruned, or still being registered) is left out, with a warning."""
    first, *others = family
    groups = []
    for version in chosen:
        group = {first: version}
        iteration = version.tags.get(names.VERSION_TAG_ITERATION)
        trial = version.tags.get(names.VERSION_TAG_TRIAL_ID) or ""
        for module in others:
            same = find_versions(mlflow_client, family[module], module_id=module,
                                 training_iteration=int(iteration or 0), trial=trial)  # fmt: skip
            if same:
                group[module] = min(same, key=lambda v: int(v.version))
        if len(group) == len(family):
            groups.append(group)
        else:
            missing = sorted(set(family) - set(group))
            logger.warning(
                "Version %s of %s: no version of module(s) %s from trial %r, iteration %s; "
                "not evaluated", version.version, family[first], ", ".join(missing),
                trial, iteration,
            )  # fmt: skip
    return groups


def agent_mapping(
    agents: list[str], modules: list[str], recorded: dict[str, str], given: dict[str, str]
) -> dict[str, str]:
    """The agent-to-module mapping to play with (`given` over `recorded`); one line naming
    the agents no module is found for, and what to pass."""
    only = {ANY_AGENT: modules[0]} if len(modules) == 1 else {}  # every agent: no choice
    mapping = {**only, **recorded, **given}
    missing = [a for a in agents if module_of(a, mapping, modules) not in modules]
    if missing:
        flags = " ".join(f"--agent-module {agent}=MODULE" for agent in missing)
        raise EnvCreationError(
            f"No module for agent(s) {', '.join(map(repr, missing))} (modules: "
            f"{', '.join(modules)}): the mapping recorded at training is a function, not data, "
            f"and their ids are no module's. Pass {flags} (agent_modules= in Python)."
        )
    return mapping


def agent_ids(env: Any) -> list[str]:
    """The agents a MultiAgentEnv declares (`possible_agents`, else `get_agent_ids()`)."""
    agents = getattr(env, "possible_agents", None) or list(env.get_agent_ids())
    return [str(agent) for agent in agents]
