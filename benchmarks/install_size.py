"""Installed size of the light install (`pip install rllib-mlflow`) beside the full one
(`pip install 'rllib-mlflow[tune,evaluate]'`), each in a fresh virtualenv, with the
versions pinned in constraints.txt.

    .venv/bin/python benchmarks/install_size.py [--keep DIR]

Prints the size of each environment's site-packages, its package count, whether Ray,
torch and TensorFlow are in it, and the ratio of the two sizes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import importlib.util, json, sysconfig; "
    "print(json.dumps({'site': sysconfig.get_paths()['purelib'], 'heavy': "
    "[m for m in ('ray', 'torch', 'tensorflow', 'keras') if importlib.util.find_spec(m)]}))"
)


def quiet(command: list[str]) -> str:
    """Run `command`; its output only when it fails (pip warns about every index)."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{command[:4]} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done.stdout


def build_wheel(directory: Path) -> Path:
    quiet(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(directory), str(ROOT)]
    )
    return next(directory.glob("rllib_mlflow-*.whl"))


def install(venv: Path, requirement: str) -> dict:
    quiet([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    quiet([python, "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), requirement])
    probe = json.loads(quiet([python, "-I", "-c", PROBE]))  # -I: not the cwd's folders
    site = Path(probe["site"])
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    packages = len(list(site.glob("*.dist-info")))
    return {"bytes": size, "packages": packages, "heavy": probe["heavy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="build the environments here and keep them")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="install_size_"))
    work.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(work)
    light = install(work / "light", str(wheel))
    full = install(work / "full", f"{wheel}[tune,evaluate]")
    for name, result in (("light: pip install rllib-mlflow", light),
                         ("full:  pip install 'rllib-mlflow[tune,evaluate]'", full)):  # fmt: skip
        print(
            f"{name:52s} {result['bytes'] / 2**20:8.0f} MiB  {result['packages']:3d} packages"
            f"  heavy: {', '.join(result['heavy']) or 'none'}"
        )
    print(f"light / full size: {light['bytes'] / full['bytes']:.3f}")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
