"""The contract of the clients rllib-mlflow talks to the registry through.

Three implementations stand behind it: MLflow's `MlflowClient`, our `RestClient` (the REST
fast path, no `import mlflow`) and, for reading only, our `SqlReader` (MLflow's tables read
directly). `RegistryReader` is what the listing commands call, `RegistryClient` what the
lookups, checks and tags call; both list exactly the methods and fields our code uses, so
that a type checker holds every implementation to them (the assignments at the end) and
tests/test_client_contract.py holds RestClient's answers to MlflowClient's on a real server.
Code that needs more of MLflow (runs, LoggedModels, artifacts) takes an `MlflowClient`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, TypeVar

_Item = TypeVar("_Item", covariant=True)


class ModelVersionInfo(Protocol):
    """The fields of a model version we read."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def creation_timestamp(self) -> int: ...
    @property
    def tags(self) -> dict[str, str]: ...
    @property
    def aliases(self) -> list[str]: ...
    @property
    def source(self) -> str | None: ...


class RegisteredModelInfo(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def aliases(self) -> Mapping[str, str]: ...


class ExperimentInfo(Protocol):
    @property
    def experiment_id(self) -> str: ...
    @property
    def name(self) -> str: ...


class Page(Protocol[_Item]):
    """One page of search results and the token of the next (None: the last page)."""

    @property
    def token(self) -> str | None: ...
    def __iter__(self) -> Iterator[_Item]: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> _Item: ...


class RegistryReader(Protocol):
    """The registry's reads of the listing commands (`versions`, `prune --dry-run`)."""

    @property
    def tracking_uri(self) -> str: ...

    def search_model_versions(
        self,
        filter_string: str,
        max_results: int = ...,
        order_by: list[str] | None = None,
        page_token: str | None = None,
    ) -> Page[ModelVersionInfo]: ...

    def get_registered_model(self, name: str) -> RegisteredModelInfo: ...

    def search_registered_models(
        self, filter_string: str | None = None, max_results: int = ...
    ) -> Page[RegisteredModelInfo]: ...


class RegistryClient(RegistryReader, Protocol):
    """The lookups, checks and tag writes, on a tracking server or any MLflow store."""

    def get_model_version(self, name: str, version: str) -> ModelVersionInfo: ...
    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersionInfo: ...
    def set_registered_model_tag(self, name: str, key: str, value: str) -> None: ...
    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None: ...
    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...
    def get_experiment_by_name(self, name: str) -> ExperimentInfo | None: ...
    def get_experiment(self, experiment_id: str) -> ExperimentInfo: ...
    def create_experiment(self, name: str) -> str: ...
    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None: ...


if TYPE_CHECKING:  # each implementation satisfies its contract, checked by basedpyright
    from mlflow import MlflowClient

    from rllib_mlflow.mlflow.rest import RestClient
    from rllib_mlflow.mlflow.sql_reader import SqlReader

    _mlflow: type[RegistryClient] = MlflowClient
    _rest: type[RegistryClient] = RestClient
    _sql: type[RegistryReader] = SqlReader
