"""One client contract: RestClient held to MlflowClient on one real `mlflow server`. Every
RestClient method runs on both against the same seeded registry, and their answers, seen
through the fields of the `RegistryClient` contract (mlflow/registry_client.py), are
equal: versions, tags, aliases, pages, experiments, downloaded files, and the error code of
a missing model, version, alias or experiment. A RestClient method that drifts (a field
dropped or renamed, another default, another error) fails its case here. And one place
for the environment: the package reads variables only through
`rllib_mlflow.environment_variables`, whose table is the documentation's."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.artifacts
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rllib_mlflow import environment_variables
from rllib_mlflow.mlflow.registry_client import RegistryClient
from rllib_mlflow.mlflow.rest import RestClient
from rllib_mlflow.mlflow.transport import RestApiError
from tests.mlflow_server import start_tracking_server

ROOT = Path(__file__).resolve().parents[1]
MODEL = "contract"
EXPERIMENT = "contract-experiment"
FILES = {"MLmodel": "flavors: {}\n", "data/policy.json": "{}\n", "data/deep/weights.bin": "01"}


@dataclass(frozen=True)
class Registry:
    uri: str
    experiment_id: str
    model_ids: dict[str, str]  # version -> LoggedModel id


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A server holding MODEL with 3 versions (tags; alias `best` on 2; files on each
    version's LoggedModel) and EXPERIMENT, seeded through MLflow's client."""
    server = start_tracking_server(tmp_path_factory.mktemp("contract"))
    try:
        yield _seed(MlflowClient(server.uri), server.uri, tmp_path_factory.mktemp("files"))
    finally:
        server.stop()


def _seed(seeding: MlflowClient, uri: str, files: Path) -> Registry:
    for relative, text in FILES.items():
        (files / relative).parent.mkdir(parents=True, exist_ok=True)
        (files / relative).write_text(text)
    experiment_id = seeding.create_experiment(EXPERIMENT)
    seeding.set_experiment_tag(experiment_id, "purpose", "contract")
    seeding.create_registered_model(MODEL, tags={"family": "cartpole"})
    model_ids = {}
    for iteration in (1, 2, 3):
        model = seeding.create_logged_model(experiment_id, name=f"policy-{iteration}")
        seeding.log_model_artifacts(model.model_id, str(files))
        version = seeding.create_model_version(
            MODEL,
            f"models:/{model.model_id}",
            tags={"training_iteration": str(iteration), "trial_id": "t1"},
            model_id=model.model_id,
        )
        model_ids[version.version] = model.model_id
    seeding.set_registered_model_alias(MODEL, "best", "2")
    seeding.set_registered_model_alias(MODEL, "first", "1")
    return Registry(uri, experiment_id, model_ids)


# -- what the contract says each answer holds ------------------------------------------------


def _seen(answer: Any) -> Any:
    """An answer through the contract's fields, so that both clients' types compare."""
    if answer is None or isinstance(answer, (str, int, bool, dict)):
        return answer
    if isinstance(answer, list) and hasattr(answer, "token"):  # a page: MLflow's or ours
        more = bool(getattr(answer, "token"))  # noqa: B009 (a list's attribute, to the checker)
        return {"items": [_seen(item) for item in answer], "more": more}
    if isinstance(answer, list):
        return [_seen(item) for item in answer]
    if hasattr(answer, "experiment_id"):
        return {"experiment_id": answer.experiment_id, "name": answer.name}
    if hasattr(answer, "version"):
        return {
            "name": answer.name,
            "version": str(answer.version),
            "creation_timestamp": answer.creation_timestamp,
            "tags": dict(answer.tags),
            "aliases": sorted(answer.aliases),
            "source": answer.source,
        }
    if hasattr(answer, "aliases"):
        return {"name": answer.name, "aliases": {a: str(v) for a, v in answer.aliases.items()}}
    raise TypeError(f"No contract view of {type(answer).__name__}")


def _outcome(call: Callable[[], Any]) -> Any:
    """What a call answers, or the error code the server refused it with."""
    try:
        return _seen(call())
    except (MlflowException, RestApiError) as error:
        return {"error": error.error_code}


# -- the cases: (RestClient's call, MlflowClient's call) -------------------------------------

Call = Callable[[Any, Registry], Any]
SAME: dict[str, Call] = {  # the same call on either client
    "get_model_version": lambda c, r: c.get_model_version(MODEL, "2"),
    "get_model_version/missing version": lambda c, r: c.get_model_version(MODEL, "99"),
    "get_model_version/missing model": lambda c, r: c.get_model_version("no-such-model", "1"),
    "get_model_version_by_alias": lambda c, r: c.get_model_version_by_alias(MODEL, "best"),
    "get_model_version_by_alias/missing": lambda c, r: c.get_model_version_by_alias(MODEL, "nope"),
    "search_model_versions": lambda c, r: c.search_model_versions(f"name = '{MODEL}'"),
    "search_model_versions/tag": lambda c, r: c.search_model_versions(
        f"name = '{MODEL}' AND tags.training_iteration = '3'"
    ),
    "search_model_versions/page 1": lambda c, r: c.search_model_versions(
        f"name = '{MODEL}'", max_results=2, order_by=["version_number DESC"]
    ),
    "search_model_versions/page 2": lambda c, r: _second_page(c),
    "search_model_versions/none": lambda c, r: c.search_model_versions("name = 'no-such-model'"),
    "get_registered_model": lambda c, r: c.get_registered_model(MODEL),
    "get_registered_model/missing": lambda c, r: c.get_registered_model("no-such-model"),
    "search_registered_models": lambda c, r: c.search_registered_models(
        f"name = '{MODEL}'", max_results=5
    ),
    "search_registered_models/none": lambda c, r: c.search_registered_models(
        "name = 'no-such-model'"
    ),
    "get_experiment_by_name": lambda c, r: c.get_experiment_by_name(EXPERIMENT),
    "get_experiment_by_name/missing": lambda c, r: c.get_experiment_by_name("no-such-experiment"),
    "get_experiment": lambda c, r: c.get_experiment(r.experiment_id),
    "get_experiment/missing": lambda c, r: c.get_experiment("987654"),
    # Writes: each client writes its own key, then MLflow's client reads what was written.
    "set_model_version_tag": lambda c, r: _written_version_tag(c, r),
    "set_registered_model_tag": lambda c, r: _written_model_tag(c, r),
    "set_registered_model_alias": lambda c, r: _moved_alias(c, r),
    "set_experiment_tag": lambda c, r: _written_experiment_tag(c, r),
    "create_experiment": lambda c, r: _created_experiment(c, r),
}
DIFFERENT: dict[str, tuple[Call, Call]] = {  # RestClient's own names for MLflow's calls
    "download_uri": (
        lambda c, r: c.download_uri(MODEL, "3"),
        lambda c, r: c.get_model_version_download_uri(MODEL, "3"),
    ),
    "download_tree": (lambda c, r: _rest_tree(c, r), lambda c, r: _mlflow_tree(r)),
    "download_artifact": (
        lambda c, r: _rest_file(c, r, "data/policy.json"),
        lambda c, r: _mlflow_file(r, "data/policy.json"),
    ),
}
# Used by download_tree and download_artifact, or only inside RestClient:
HELPERS = {"proxied_artifact_path"}


@pytest.mark.slow  # the module's server starts in about 10 s; each case takes milliseconds
@pytest.mark.parametrize("case", [*SAME, *DIFFERENT])
def test_rest_client_answers_as_mlflow_client_does(registry: Registry, case: str) -> None:
    rest, official = RestClient(registry.uri), MlflowClient(registry.uri)
    rest_call, mlflow_call = DIFFERENT.get(case) or (SAME[case], SAME[case])
    expected = _outcome(lambda: mlflow_call(official, registry))
    assert _outcome(lambda: rest_call(rest, registry)) == expected
    assert expected not in (None, {"items": [], "more": False}) or case.endswith(
        ("missing", "none")
    ), "a case that finds nothing compares nothing"


def test_every_rest_client_method_has_a_case() -> None:
    """A method added to RestClient (or to the contract) gets a case above."""
    public = {n for n, _ in inspect.getmembers(RestClient, inspect.isfunction) if n[0] != "_"}
    contract = {n for n in dir(RegistryClient) if not n.startswith("_")} - {"tracking_uri"}
    covered = {case.split("/")[0] for case in [*SAME, *DIFFERENT]}
    assert public - HELPERS == covered
    assert contract <= covered


def test_the_documented_table_of_environment_variables_is_the_module_s() -> None:
    """docs/reference/environment-variables.md names the table; the site's hook puts the
    module's own there (tests/test_api_docs.py checks the built page)."""
    from scripts.mkdocs_hooks import render

    page = (ROOT / "docs" / "reference" / "environment-variables.md").read_text()
    lines = render(page).split("| variable | default | meaning |", 1)[1].splitlines()
    table = ["| variable | default | meaning |", *itertools.takewhile(str.strip, lines[1:])]
    assert "\n".join(table) == environment_variables.readme_table()


def test_the_package_reads_environment_variables_through_the_module() -> None:
    """`os.environ.get("X")` / `os.environ["X"]` / `os.getenv("X")` outside the module."""
    reads = re.compile(r"""(?:os\.environ\.get\(|os\.getenv\(|os\.environ\[)\s*["'](\w+)""")
    known = {v.name for v in environment_variables.VARIABLES}
    found = {}
    for path in (ROOT / "rllib_mlflow").rglob("*.py"):
        if path.name != "environment_variables.py" and "policy" not in path.parts:
            for name in reads.findall(path.read_text()):
                found.setdefault(name, path.relative_to(ROOT))
    # The worker passes TensorFlow's log level on to its child with a default: not a setting.
    assert {n: p for n, p in found.items() if n != "TF_CPP_MIN_LOG_LEVEL"} == {}
    assert "OMP_NUM_THREADS" in known  # read by policy/serving.py, standalone in models


def test_one_resolution_of_the_tracking_and_registry_uris(monkeypatch) -> None:
    """Passed, else the environment, else the tracking URI (MLflow is loaded here, so its
    `set_tracking_uri` counts, as it does for MlflowClient)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    assert environment_variables.tracking_uri() == mlflow.get_tracking_uri()
    assert environment_variables.tracking_uri("http://given") == "http://given"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert environment_variables.tracking_uri() == "http://from-env:5000"
    assert environment_variables.registry_uri() == "http://from-env:5000"
    assert environment_variables.registry_uri(None, "http://given") == "http://given"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry")
    assert environment_variables.registry_uri(None, "http://given") == "http://registry"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    assert "hunter2" not in repr(environment_variables.credentials())


# -- helpers of the cases ------------------------------------------------------------------------


def _second_page(client: Any) -> Any:
    query = f"name = '{MODEL}'"
    first = client.search_model_versions(query, max_results=2, order_by=["version_number DESC"])
    return client.search_model_versions(
        query, max_results=2, order_by=["version_number DESC"], page_token=first.token
    )


def _label(client: Any) -> str:
    return "rest" if isinstance(client, RestClient) else "mlflow"


def _written_version_tag(client: Any, registry: Registry) -> Any:
    key = f"checked-by-{_label(client)}"
    client.set_model_version_tag(MODEL, "1", key, "yes")
    return MlflowClient(registry.uri).get_model_version(MODEL, "1").tags.get(key)


def _written_model_tag(client: Any, registry: Registry) -> Any:
    key = f"checked-by-{_label(client)}"
    client.set_registered_model_tag(MODEL, key, "yes")
    return MlflowClient(registry.uri).get_registered_model(MODEL).tags.get(key)


def _moved_alias(client: Any, registry: Registry) -> Any:
    alias = f"moved-by-{_label(client)}"
    client.set_registered_model_alias(MODEL, alias, "3")
    return str(MlflowClient(registry.uri).get_model_version_by_alias(MODEL, alias).version)


def _written_experiment_tag(client: Any, registry: Registry) -> Any:
    key = f"checked-by-{_label(client)}"
    client.set_experiment_tag(registry.experiment_id, key, "yes")
    return MlflowClient(registry.uri).get_experiment(registry.experiment_id).tags.get(key)


def _created_experiment(client: Any, registry: Registry) -> Any:
    name = f"created-by-{_label(client)}"
    experiment_id = client.create_experiment(name)
    experiment = MlflowClient(registry.uri).get_experiment(experiment_id)
    return {"named": experiment.name == name, "stage": experiment.lifecycle_stage}


def _rest_tree(client: RestClient, registry: Registry) -> dict[str, str]:
    path = _proxied(client, "3")
    with tempfile.TemporaryDirectory() as directory:
        client.download_tree(path, directory, "model")
        return _digests(Path(directory) / "model")


def _mlflow_tree(registry: Registry) -> dict[str, str]:
    uri = MlflowClient(registry.uri).get_model_version_download_uri(MODEL, "3")
    with tempfile.TemporaryDirectory() as directory:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=uri, dst_path=directory, tracking_uri=registry.uri
        )
        return _digests(Path(local))


def _rest_file(client: RestClient, registry: Registry, relative: str) -> str:
    path = _proxied(client, "3")
    with tempfile.TemporaryDirectory() as directory:
        return Path(client.download_artifact(f"{path}/{relative}", directory, relative)).read_text()


def _mlflow_file(registry: Registry, relative: str) -> str:
    return _mlflow_tree(registry)[relative]


def _proxied(client: RestClient, version: str) -> str:
    path = client.proxied_artifact_path(client.download_uri(MODEL, version))
    assert path is not None, "the server proxies its artifacts"
    return path


def _digests(root: Path) -> dict[str, str]:
    """Every file below `root` by relative path: its text (small files) or its digest."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): p.read_text()
        if p.stat().st_size < 200
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }
