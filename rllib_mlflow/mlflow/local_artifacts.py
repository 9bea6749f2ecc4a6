"""A model's files in an artifact store on this machine's filesystem: a local directory or a
mount (NFS, a shared volume), as a server started with ``--no-serve-artifacts
--default-artifact-root /shared/mlartifacts`` names it.

The location comes from the server, so it is held to what a model's folder looks like (an
absolute, normalised path), and every file read must stay inside it, symlinks resolved.
"""

from __future__ import annotations

import os
import urllib.parse

from rllib_mlflow.errors import RegistryError, UnsafePathError
from rllib_mlflow.mlflow.artifact_limits import Limits, copy_limited
from rllib_mlflow.paths import inside_source, relative_parts


def local_path(artifact_uri: str) -> str:
    """The directory of a `file:` URI or a plain path, refused unless absolute and free of
    `.` and `..` components (a server has no reason to name anything else)."""
    parsed = urllib.parse.urlparse(artifact_uri)
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else artifact_uri
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        path = ""  # file://host/share: another machine's disk
    if not path or not os.path.isabs(path) or "\x00" in path:
        raise UnsafePathError(
            f"Refusing the artifact location {artifact_uri!r}: it is no absolute path on this "
            "machine. The model's registry entry may have been tampered with."
        )
    if any(part in (".", "..") for part in path.split("/")):
        raise UnsafePathError(
            f"Refusing the artifact location {artifact_uri!r}: it climbs with '..'. The "
            "model's registry entry may have been tampered with."
        )
    return path.rstrip("/") or "/"


class LocalArtifacts:
    """The files below one model's folder on a local or mounted filesystem."""

    def __init__(self, artifact_uri: str, limits: Limits):
        self.root = local_path(artifact_uri)
        self.limits = limits
        if not os.path.isdir(self.root):
            raise RegistryError(
                f"The model's files are at {self.root}, which is no directory on this machine. "
                "Mount the artifact store at the path the tracking server uses, or start the "
                "server with --serve-artifacts so that clients download through it."
            )

    def describe(self) -> str:
        return self.root

    def fetch(self, relative: str, local_dir: str) -> str:
        """Copy `root/relative` to `local_dir/relative`."""
        source = inside_source(self.root, relative)
        if not os.path.isfile(source):
            raise RegistryError(f"The model's folder {self.root} has no file {relative!r}.")
        self.limits.check_size(relative, os.path.getsize(source), self.root)
        with open(source, "rb") as stream:
            return copy_limited(stream.read, local_dir, relative, self.root, self.limits)

    def fetch_tree(self, relative: str, local_dir: str) -> None:
        """Copy every file below `root/relative` to `local_dir/relative`."""
        top = inside_source(self.root, relative)
        for folder, dirs, files in os.walk(top):
            below = os.path.relpath(folder, self.root)
            for name in dirs:  # not followed by os.walk: refuse those that lead out
                inside_source(self.root, f"{below}/{name}")
            for name in files:
                self.fetch("/".join(relative_parts(f"{below}/{name}", self.root)), local_dir)
