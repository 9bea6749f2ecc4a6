"""Checkpoints registered per minute by a backfill (`rllib-mlflow register --workers 1` and
`--workers 2` on an archive of a few hundred `algo.save()` directories), side by side with
the Tune callback's sustained rate on the same kind of checkpoint, with the ratios.

    python benchmarks/backfill.py [--iterations 20] [--runs 10] [--rounds 1]
                                  [--formats saved_model h5 onnx] [--workdir DIR]
                                  [--callback-trials 16] [--callback-every 3]
                                  [--callback-duration 30]

Smoke run (a few minutes): `python benchmarks/backfill.py --iterations 3 --runs 2
--callback-trials 2 --callback-duration 6 --formats onnx`.

The archive: one PPO CartPole (tiny nets) trained for --iterations iterations, `algo.save()`
after each into run_00/iter_NNN, and that folder copied to run_01 ... (--runs folders in
all, --iterations x --runs checkpoints; each folder becomes its own run, so every
checkpoint is its own version). Cached under --workdir when given.

The backfill: `rllib-mlflow register ARCHIVE --workers W -q --json` as a user runs it (a
fresh process, so its imports and the listing of the archive are on the clock), on a fresh
SQLite store each time; rate = versions registered / wall time. With --rounds R, the two
worker counts alternate R times and the median and spread are printed.

The callback: `benchmarks/throughput.py`'s replay of `MLflowCheckpointCallback`'s export
workers (--callback-trials trials checkpointing every --callback-every seconds for
--callback-duration seconds, one of the archive's checkpoints) with 1 and 2 export
processes; its rate is sustained registrations per minute while more is offered than they
can keep up with (the offered rate is printed: a rate below it is the workers' capacity).

Outside the clock it checks that each backfill registered every checkpoint exactly once,
and exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import throughput  # noqa: E402  (the callback's replay, its machine and store helpers)

from rllib_mlflow.export import FORMATS  # noqa: E402

CLI = str(Path(sys.executable).with_name("rllib-mlflow"))
NAME = "backfill"


# -- the archive ---------------------------------------------------------------------------


def make_archive(workdir: Path, iterations: int, runs: int) -> Path:
    """run_00/iter_001 ... as `algo.save()` writes them, run_00 copied to the other runs."""
    archive = workdir / f"archive_{iterations}x{runs}"
    if (archive / f"run_{runs - 1:02d}" / f"iter_{iterations:03d}").exists():
        return archive
    first = archive / "run_00"
    if not (first / f"iter_{iterations:03d}").exists():
        train_run(first, iterations)
    for run in range(1, runs):
        shutil.copytree(first, archive / f"run_{run:02d}", dirs_exist_ok=True)
    return archive


def train_run(folder: Path, iterations: int) -> None:
    print(f"Training PPO CartPole for {iterations} iterations, saving each...", flush=True)
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    config = (
        PPOConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0)
        .training(train_batch_size_per_learner=200, minibatch_size=100, num_epochs=1)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16, 16]))
        .debugging(seed=0, log_level="ERROR")
    )
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        algo = config.build_algo()
        try:
            for iteration in range(1, iterations + 1):
                algo.train()
                algo.save(str(folder / f"iter_{iteration:03d}"))
        finally:
            algo.stop()
    finally:
        ray.shutdown()


# -- the backfill --------------------------------------------------------------------------


def backfill(archive: Path, workers: int, formats: list[str], store: Path) -> dict:
    """One `register` of the whole archive on a fresh store: wall time and what it did."""
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    command = [CLI, "register", str(archive), "--name", NAME, "--workers", str(workers),
               "--formats", ",".join(formats), "-q", "--json"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=store)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"register --workers {workers} failed:\n{proc.stderr[-3000:]}")
    (report,) = json.loads(proc.stdout)
    registered = len(report["registered"])
    return {
        "workers": workers,
        "seconds": seconds,
        "registered": registered,
        "per_minute": registered / seconds * 60,
        "problems": exactly_once(uri),
    }


def exactly_once(uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{NAME}'", max_results=10_000)
    keys = Counter((v.tags["trial_id"], v.tags["training_iteration"]) for v in versions)
    return [f"{key}: {count} versions" for key, count in keys.items() if count > 1]


# -- the callback --------------------------------------------------------------------------


def callback_rate(checkpoint: str, workers: int, args: argparse.Namespace, cell_dir: Path):
    """throughput.py's replay of the callback's export workers at a rate above theirs."""
    replay_args = argparse.Namespace(
        formats=args.formats,
        tracking_uri=None,
        max_staged=None,
        max_staged_bytes=None,
        every=args.callback_every,
        duration=args.callback_duration,
    )
    cell = throughput.Cell(args.callback_trials, workers)
    return throughput.replay(cell, replay_args, checkpoint, cell_dir)


# -- output --------------------------------------------------------------------------------


def summary(rates: list[float]) -> str:
    if len(rates) == 1:
        return f"{rates[0]:.1f}/min"
    spread = max(rates) - min(rates)
    each = ", ".join(f"{rate:.1f}" for rate in rates)
    return f"{statistics.median(rates):.1f}/min median (spread {spread:.1f}; rounds {each})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="checkpoints per run")
    parser.add_argument("--runs", type=int, default=10, help="folders (runs) in the archive")
    parser.add_argument("--rounds", type=int, default=1, help="backfills per worker count")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--workdir", help="keep the archive here (default: a temporary one)")
    parser.add_argument("--callback-trials", type=int, default=16)
    parser.add_argument("--callback-every", type=float, default=3.0, help="seconds")
    parser.add_argument("--callback-duration", type=float, default=30.0, help="seconds")
    return parser.parse_args()


def backfills(archive: Path, count: int, args: argparse.Namespace, run_dir: Path):
    """The backfill rates of each worker count, rounds alternating, and what went wrong."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    problems = []
    for round_ in range(args.rounds):
        for workers in (1, 2):  # alternating, so that drift hits both alike
            row = backfill(archive, workers, args.formats, run_dir / f"b{round_}-w{workers}")
            seconds, rate = row["seconds"], row["per_minute"]
            print(f"register --workers {workers}: {row['registered']} of {count} in "
                  f"{seconds:.1f} s = {rate:.1f}/min", flush=True)  # fmt: skip
            rates[workers].append(rate)
            problems += row["problems"]
            if row["registered"] != count:
                problems.append(f"--workers {workers}: {row['registered']} of {count}")
    return rates, problems


def callbacks(checkpoint: str, args: argparse.Namespace, run_dir: Path):
    """The callback's rate with 1 and 2 export processes, and what went wrong."""
    offered = args.callback_trials * 60 / args.callback_every
    print(f"\ncallback: {args.callback_trials} trials, a checkpoint each every "
          f"{args.callback_every:g} s for {args.callback_duration:g} s "
          f"(offered {offered:.0f}/min)")  # fmt: skip
    print(throughput.HEADER)
    rates: dict[int, float | None] = {}
    problems = []
    for workers in (1, 2):
        cell = callback_rate(checkpoint, workers, args, run_dir / f"callback-w{workers}")
        print(throughput.format_row(cell), flush=True)
        rates[workers] = cell.per_minute
        problems += list(cell.problems)
    return rates, problems


def print_ratios(backfill_rates: dict[int, list[float]], callback: dict[int, float | None]):
    print("\ncheckpoints registered per minute:")
    for workers in (1, 2):
        rate = callback[workers]
        shown = "-" if rate is None else f"{rate:.1f}/min"
        print(f"  backfill --workers {workers}: {summary(backfill_rates[workers])}; "
              f"callback, {workers} export process(es): {shown}")  # fmt: skip
    w1, w2 = (statistics.median(backfill_rates[w]) for w in (1, 2))
    print(f"  backfill --workers 2 / --workers 1: {w2 / w1:.2f}")
    for workers, backfill_rate in ((1, w1), (2, w2)):
        rate = callback[workers]
        if rate:
            print(f"  backfill / callback, {workers} process(es): {backfill_rate / rate:.2f}")


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_backfill_") as scratch:
        workdir = Path(args.workdir or scratch).absolute()
        archive = make_archive(workdir, args.iterations, args.runs)
        count = args.iterations * args.runs
        run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=workdir))
        print(throughput.describe_machine())
        print(f"archive {archive}: {count} checkpoints in {args.runs} folders; formats "
              f"{', '.join(args.formats)}; fresh SQLite store per measurement\n")  # fmt: skip
        throughput.warm_disk_cache(args.formats)
        backfill_rates, problems = backfills(archive, count, args, run_dir)
        checkpoint = str(archive / "run_00" / f"iter_{args.iterations:03d}")
        callback, callback_problems = callbacks(checkpoint, args, run_dir)
        print_ratios(backfill_rates, callback)
        print(f"load average at the end: {throughput.load_average()} (on {os.cpu_count()} cores)")
        problems += callback_problems
        if problems:
            print("\nNOT exactly once:\n" + "\n".join(f"  {p}" for p in problems))
            sys.exit(1)
        print("\nevery checkpoint registered exactly once")


if __name__ == "__main__":
    main()
