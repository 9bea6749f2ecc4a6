"""Where files named by someone else may be written.

Artifact listings, the MLmodel's `data:` and recorded checkpoint locations come from a
tracking server, a proxy or whoever could write a model's artifacts: every local path
built from them must stay inside the folder being written to.
"""

from __future__ import annotations

import os
import re

from rllib_mlflow.errors import UnsafePathError


def inside(root: str, relative: str) -> str:
    """`root/relative`, refused unless it stays inside `root`: no absolute path, no `..`
    component, no symlink leading out."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafePathError(f"Refusing to write to an empty or invalid path {relative!r}.")
    parts = re.split(r"[/\\]", relative)
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ".." in parts:
        raise UnsafePathError(
            f"Refusing to write {relative!r}: the server named a path outside the download "
            f"folder {root}. The model's artifacts may have been tampered with."
        )
    target = os.path.join(root, relative)
    if not is_within(root, target):
        raise UnsafePathError(
            f"Refusing to write {relative!r}: it leads out of {root} through a symlink."
        )
    return target


def is_within(root: str, path: str) -> bool:
    """True when `path`, symlinks resolved, is `root` or below it."""
    base = os.path.realpath(root)
    return os.path.commonpath([base, os.path.realpath(path)]) == base


def check_tree(root: str) -> None:
    """Refuse a downloaded tree holding a symlink that leads out of it."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path) and not is_within(root, path):
                raise UnsafePathError(
                    f"Refusing the download in {root}: {path} links outside it "
                    f"(to {os.readlink(path)})."
                )
