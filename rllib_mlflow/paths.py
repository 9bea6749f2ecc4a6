"""Where files named by someone else may be written, and read.

Artifact listings, the MLmodel's `data:` and recorded checkpoint locations come from a
tracking server, a proxy or whoever could write a model's artifacts: every local path
built from them must stay inside the folder being written to, and every file read from an
artifact store the server names must stay inside the model's own folder there.
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


def relative_parts(relative: str, where: str) -> list[str]:
    """The components of `relative`, a path the server names below the model's folder
    `where` in an artifact store: refused when empty, absolute or climbing out with `..`."""
    parts = re.split(r"[/\\]", relative) if isinstance(relative, str) else []
    if (
        not isinstance(relative, str)
        or not relative
        or "\x00" in relative
        or relative.startswith(("/", "\\"))
        or os.path.isabs(relative)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UnsafePathError(
            f"Refusing to read {relative!r}: the server named a path outside the model's "
            f"folder {where}. The model's artifacts may have been tampered with."
        )
    return parts


def inside_source(root: str, relative: str) -> str:
    """`root/relative` in a local artifact store, refused unless it stays inside `root`
    with every symlink resolved."""
    target = os.path.join(root, *relative_parts(relative, root))
    if not is_within(root, target):
        raise UnsafePathError(
            f"Refusing to read {relative!r}: it leads out of the model's folder {root} "
            f"through a symlink (to {os.path.realpath(target)})."
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
