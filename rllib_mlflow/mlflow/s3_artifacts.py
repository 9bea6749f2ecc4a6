"""A model's files in an S3 bucket (AWS, MinIO, SeaweedFS...), read with boto3 and the
client's own credentials, as MLflow's client does against a server started with
``--no-serve-artifacts --default-artifact-root s3://bucket/path``.

boto3 comes with ``pip install 'rllib-mlflow[s3]'`` and reads its usual settings (AWS_*,
~/.aws); like MLflow, MLFLOW_S3_ENDPOINT_URL names a non-AWS endpoint, MLFLOW_S3_IGNORE_TLS
skips certificate checks and MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE picks path or virtual
addressing. Every key read stays below the model's prefix.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator

from rllib_mlflow import environment_variables as env
from rllib_mlflow.errors import RegistryError, TrackingError, UnsafePathError
from rllib_mlflow.extras import import_feature
from rllib_mlflow.mlflow.artifact_limits import Limits, copy_limited
from rllib_mlflow.paths import relative_parts
from rllib_mlflow.redaction import mask_urls

_ATTEMPTS = 3  # a dead endpoint is reported in seconds, as over HTTP


class S3Artifacts:
    """The objects below one model's prefix in a bucket."""

    def __init__(self, artifact_uri: str, limits: Limits):
        parsed = urllib.parse.urlparse(artifact_uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        if not self.bucket or (self.prefix and _climbs(self.prefix)):
            raise UnsafePathError(
                f"Refusing the artifact location {artifact_uri!r}: no bucket, or a key that "
                "climbs with '..'. The model's registry entry may have been tampered with."
            )
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.limits = limits
        self._s3 = _client(limits, self.uri)

    def describe(self) -> str:
        return self.uri

    def fetch(self, relative: str, local_dir: str) -> str:
        """Copy the object `prefix/relative` to `local_dir/relative`."""
        key = self._key(relative)
        with self._errors(relative):
            answer = self._s3.get_object(Bucket=self.bucket, Key=key)
            self.limits.check_size(relative, int(answer.get("ContentLength") or 0), self.uri)
            body = answer["Body"]
            # urllib3's read1 returns whatever has arrived: `read(n)` would wait for n bytes,
            # past any deadline, from a store that trickles them.
            read = getattr(getattr(body, "_raw_stream", None), "read1", body.read)
            try:
                return copy_limited(read, local_dir, relative, self.uri, self.limits)
            finally:
                body.close()

    def fetch_tree(self, relative: str, local_dir: str) -> None:
        """Copy every object below `prefix/relative/` to `local_dir/relative/...`."""
        top = self._key(relative) + "/"
        with self._errors(relative):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=top
            )
            keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        for key in keys:
            if not key.endswith("/"):  # a folder marker holds nothing
                self.fetch(f"{relative}/{key[len(top) :]}", local_dir)

    def _key(self, relative: str) -> str:
        parts = relative_parts(relative, self.uri)
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def _errors(self, relative: str):
        return _s3_errors(self.uri, relative, self.limits)


@contextlib.contextmanager
def _s3_errors(where: str, relative: str, limits: Limits) -> Iterator[None]:
    """botocore's errors said in one line with what to do; the credentials never shown."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError as error:
        raise TrackingError(
            f"Cannot read {where}: no AWS credentials. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), as for MLflow's own client."
        ) from error
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise RegistryError(f"The model's folder {where} has no file {relative!r}.") from error
        raise TrackingError(
            f"The S3 store refused reading {where}/{relative} ({code}). Check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions.",
            status=error.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
        ) from error
    except BotoCoreError as error:
        limits.check_time(where)
        raise TrackingError(
            f"Cannot read {where} from the S3 endpoint {_endpoint_shown()} "
            f"({type(error).__name__}). Set MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) "
            "to a reachable endpoint."
        ) from error


def _client(limits: Limits, where: str):
    boto3 = import_feature("boto3", f"Reading the model's files from {where}", "s3")
    from botocore.config import Config

    timeout = limits.read_timeout(where)
    config = Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": _ATTEMPTS, "mode": "standard"},
        s3={"addressing_style": env.MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE.value()},
    )
    ignore_tls = env.MLFLOW_S3_IGNORE_TLS.enabled()
    return boto3.client(
        "s3",
        endpoint_url=env.MLFLOW_S3_ENDPOINT_URL.value(),
        verify=False if ignore_tls else None,
        config=config,
    )


def _climbs(key: str) -> bool:
    return any(part in (".", "..") for part in key.split("/"))


def _endpoint_shown() -> str:
    endpoint = env.MLFLOW_S3_ENDPOINT_URL.value() or env.AWS_ENDPOINT_URL.value()
    return mask_urls(endpoint) if endpoint else "of AWS"
