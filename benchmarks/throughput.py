"""Sustained registrations per minute of the export workers, as sweeps of 1, 4 and 16 trials
checkpoint every K seconds, with 1 and N export processes, side by side.

    python benchmarks/throughput.py [--checkpoint DIR] [--workdir DIR] [--workers N]
                                    [--trials 1 4 16] [--every 5] [--duration 20]
                                    [--formats saved_model h5 onnx] [--tracking-uri URI]
                                    [--max-staged N] [--max-staged-bytes BYTES]

Smoke run (a minute or two): `python benchmarks/throughput.py --trials 1 4 --duration 6
--every 3 --formats onnx`.

Without --checkpoint, one PPO CartPole checkpoint is trained first (tiny nets, one
iteration, `Algorithm.save()`), cached under --workdir when given. Then, for each trial
count T and each number of export processes W (1, then N: --workers, default
`max(2, default_export_workers())`), a fresh tracking store (SQLite in a fresh directory,
or a fresh experiment and registered model on --tracking-uri) and a fresh `ExportDispatcher` are
driven the way `MLflowCheckpointCallback` drives them: the worker of the first lane
started up front (as in `setup()`), `start_run` per trial, and each trial checkpointing
every K seconds for --duration seconds (its first checkpoint K seconds in, as a trial's
first iteration would take; the trials spread evenly over the period, as trials started
apart would). Each checkpoint is the saved one as a `ray.tune.Checkpoint`, with its
iteration's metrics sent first (`log_metrics`), staged through `dispatcher.staging`,
journaled `queued` as a `RegistrationTask` of that trial and iteration, and handed to
`dispatcher.submit`; at the end each run is ended and the dispatcher flushed. Trial ids are
made as Tune makes them (a random prefix and a counter). Before the first row, one process
imports what the workers import, so that the first row does not pay alone for a cold disk
cache.

Prints the machine (and the load average at the start and at the end), then one row per
(T, W): checkpoints queued, versions registered, sustained registrations per minute
(registered / (last registered - first queued) * 60, worker start-up included), the lag
from `queued` to `registered` (p50, p95, from the journal's times), the peak staging disk,
the wall time of the final flush, and how the trials fell on the workers (they take them
in turn). Then, per T, the ratio of registrations per minute
with N processes over 1.

Outside the clock it checks that every (trial, iteration) was registered exactly once
(`search_model_versions`), and exits 1 listing what is missing or doubled.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rllib_mlflow.export import FORMATS  # noqa: E402
from rllib_mlflow.mlflow.runs import TrialInfo  # noqa: E402
from rllib_mlflow.register.metrics import result_metrics  # noqa: E402
from rllib_mlflow.register.task import RegistrationSettings, RegistrationTask  # noqa: E402
from rllib_mlflow.tune.dispatcher import ExportDispatcher, default_export_workers  # noqa: E402
from rllib_mlflow.tune.journal import QUEUED, REGISTERED, Journal  # noqa: E402
from rllib_mlflow.tune.staging import StagingLimit  # noqa: E402


@dataclass
class Cell:
    """One (trials, workers) replay and what it measured."""

    trials: int
    workers: int
    checkpoints: int = 0
    registered: int = 0
    per_minute: float | None = None
    lag_p50: float | None = None
    lag_p95: float | None = None
    peak_staging_mib: float = 0.0
    flush_seconds: float = 0.0
    trials_per_worker: str = ""
    problems: tuple[str, ...] = ()


# -- the checkpoint ----------------------------------------------------------------------


def trained_checkpoint(workdir: Path) -> str:
    """A PPO CartPole checkpoint after one iteration with tiny nets (reused if present)."""
    path = workdir / "ppo_cartpole_checkpoint"
    if (path / "rllib_checkpoint.json").exists():
        return str(path)
    print("Training a PPO CartPole checkpoint (one iteration)...", flush=True)
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
            algo.train()
            path.mkdir(parents=True, exist_ok=True)
            algo.save(str(path))
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    return str(path)


def warm_disk_cache(formats: list[str]) -> None:
    """Import what the workers import once, outside the clock, so that the first row is not
    charged alone for reading TensorFlow, torch and ONNX from a cold disk."""
    modules = ["rllib_mlflow.register.registration", "rllib_mlflow.export.onnx"]
    if {"saved_model", "h5"} & set(formats):
        modules.append("rllib_mlflow.export.keras")
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"], check=True)


# -- one replay ----------------------------------------------------------------------------


def checkpoint_schedule(trial_ids: list[str], every: float, duration: float) -> list[tuple]:
    """(seconds from the start, trial id, iteration), in time order: each trial checkpoints
    every `every` seconds, its first one `every` seconds in, the trials spread evenly."""
    iterations = range(1, int(duration // every) + 1)
    events = [
        (every * (iteration + index / len(trial_ids)), trial_id, iteration)
        for index, trial_id in enumerate(trial_ids)
        for iteration in iterations
    ]
    return sorted(events)


def fake_result(iteration: int, trial_index: int) -> dict:
    """What Tune would report for this iteration (the return rises, so `best` moves)."""
    return {
        "training_iteration": iteration,
        "num_env_steps_sampled_lifetime": 200 * iteration,
        "env_runners": {"episode_return_mean": 10.0 * iteration + trial_index},
    }


def tune_trial_ids(count: int) -> list[str]:
    """Trial ids as Tune makes them (BasicVariantGenerator): one random prefix per
    experiment, then a counter."""
    prefix = uuid.uuid1().hex[:5]
    return [f"{prefix}_{index:05d}" for index in range(count)]


def fresh_store(cell_dir: Path, tracking_uri: str | None, experiment: str) -> str:
    """The tracking URI to use, with `experiment` created (artifacts under `cell_dir` for
    SQLite); created here, once, so that the workers do not race to set up a new database."""
    from mlflow import MlflowClient

    cell_dir.mkdir(parents=True)
    uri = tracking_uri or f"sqlite:///{cell_dir / 'mlflow.db'}"
    artifacts = None if tracking_uri else (cell_dir / "artifacts").as_uri()
    MlflowClient(uri).create_experiment(experiment, artifact_location=artifacts)
    return uri


def replay(cell: Cell, args: argparse.Namespace, saved: str, cell_dir: Path) -> Cell:
    """Drive a fresh ExportDispatcher as the callback would, flush it, then measure and verify."""
    from ray.tune import Checkpoint

    from rllib_mlflow.rllib.uris import checkpoint_uri

    suffix = uuid.uuid4().hex[:6]
    name = f"throughput-t{cell.trials}-w{cell.workers}-{suffix}"
    uri = fresh_store(cell_dir, args.tracking_uri, experiment=name)
    settings = RegistrationSettings(registered_model_name=name, formats=tuple(args.formats))
    dispatcher = ExportDispatcher(
        {
            "tracking_uri": uri,
            "registry_uri": None,
            "experiment_name": name,
            "tags": {},
            "source": sys.argv[0],
            "prewarm_formats": list(args.formats),
        },
        workers=cell.workers,
        staging=StagingLimit.from_env(args.max_staged, args.max_staged_bytes),
    )
    journal = dispatcher.journal_for(str(cell_dir / "experiment"))
    trial_ids = tune_trial_ids(cell.trials)
    trials = {t: TrialInfo(t, f"PPO_CartPole-v1_{t}", name).to_json() for t in trial_ids}
    checkpoint = Checkpoint.from_directory(saved)
    source = checkpoint_uri(checkpoint)

    dispatcher.start_worker()  # as the callback's setup() does
    for trial in trials.values():
        dispatcher.send("start_run", trial=trial)
    start = time.monotonic()
    for seconds, trial_id, iteration in checkpoint_schedule(trial_ids, args.every, args.duration):
        time.sleep(max(0.0, start + seconds - time.monotonic()))
        result = fake_result(iteration, trial_ids.index(trial_id))
        metrics = result_metrics(result)
        trial = trials[trial_id]
        dispatcher.send("log_metrics", optional=True, trial=trial, metrics=metrics, step=iteration)
        staged = dispatcher.staging.stage(checkpoint, journal.path.parent, trial_id, iteration)
        task = RegistrationTask(
            settings=settings,
            checkpoint=staged or source,
            checkpoint_uri=source,
            training_iteration=iteration,
            metrics=metrics,
            trial_id=trial_id,
            trial_name=trial["name"],
            metrics_logged=True,  # sent just before, as the callback does
        )
        journal.record(QUEUED, task.key, **task.to_json())
        dispatcher.submit(journal, task, trial=trial)
        cell.checkpoints += 1
    for trial in trials.values():
        dispatcher.send("end_run", trial=trial, status="FINISHED")
    flush_start = time.perf_counter()
    dispatcher.flush()
    cell.flush_seconds = time.perf_counter() - flush_start

    cell.peak_staging_mib = dispatcher.staging.peak_bytes / 2**20
    cell.trials_per_worker = "+".join(map(str, dispatcher.trials_per_worker()))
    measure_journal(cell, journal)
    cell.problems = tuple(check_exactly_once(uri, name, journal))
    return cell


def measure_journal(cell: Cell, journal: Journal) -> None:
    """Registrations per minute and the lags, from the journal's `time` fields."""
    queued, registered = {}, {}
    for entry in journal.entries():
        if entry["event"] == QUEUED:
            queued.setdefault(entry["key"], entry["time"])
        elif entry["event"] == REGISTERED:
            registered.setdefault(entry["key"], entry["time"])
    lags = sorted(registered[key] - queued[key] for key in registered if key in queued)
    cell.registered = len(registered)
    if lags:
        span = max(registered.values()) - min(queued.values())
        cell.per_minute = len(registered) / span * 60
        cell.lag_p50, cell.lag_p95 = percentile(lags, 50), percentile(lags, 95)


def check_exactly_once(uri: str, name: str, journal: Journal) -> list[str]:
    """What is wrong with the registry: (trial, iteration)s queued but not registered
    exactly once, and versions no checkpoint asked for."""
    from rllib_mlflow import names
    from rllib_mlflow.mlflow.client import client
    from rllib_mlflow.mlflow.versions import find_versions

    expected = {
        (entry["trial_id"], entry["training_iteration"])
        for entry in journal.entries()
        if entry["event"] == QUEUED
    }
    found = Counter(
        (
            version.tags.get(names.VERSION_TAG_TRIAL_ID),
            int(version.tags[names.VERSION_TAG_ITERATION]),
        )
        for version in find_versions(client(uri), name)
    )
    problems = [f"{trial} iteration {it}: not registered" for trial, it in expected - set(found)]
    problems += [
        f"{trial} iteration {it}: registered {count} times"
        for (trial, it), count in found.items()
        if count > 1
    ]
    problems += [f"{trial} iteration {it}: never queued" for trial, it in set(found) - expected]
    return sorted(problems)


def percentile(values: list[float], percent: float) -> float:
    return values[min(len(values) - 1, round(percent / 100 * (len(values) - 1)))]


# -- output ------------------------------------------------------------------------------


def describe_machine() -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {os.cpu_count()} cores, {ram:.1f} GiB RAM, Python {platform.python_version()}, "
        f"{platform.platform()} (load average at start: {load_average()})"
    )


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


HEADER = (
    f"{'trials':>6}{'workers':>8}{'ckpts':>7}{'registered':>11}{'reg/min':>9}"
    f"{'lag p50 s':>11}{'lag p95 s':>11}{'peak staging MiB':>18}{'final flush s':>15}"
    f"  trials per worker"
)


def format_row(cell: Cell) -> str:
    def number(value: float | None, width: int) -> str:
        return f"{value:>{width}.2f}" if value is not None else f"{'-':>{width}}"

    return (
        f"{cell.trials:>6}{cell.workers:>8}{cell.checkpoints:>7}{cell.registered:>11}"
        f"{number(cell.per_minute, 9)}{number(cell.lag_p50, 11)}{number(cell.lag_p95, 11)}"
        f"{cell.peak_staging_mib:>18.2f}{cell.flush_seconds:>15.2f}  {cell.trials_per_worker}"
    )


def print_ratios(cells: list[Cell], many: int) -> None:
    print(f"\nregistrations per minute, {many} export processes / 1:")
    for trials in sorted({cell.trials for cell in cells}):
        rate = {c.workers: c.per_minute for c in cells if c.trials == trials}
        if rate.get(1) and rate.get(many):
            print(f"  {trials:>3} trial(s): {rate[many] / rate[1]:.2f}")
        else:
            print(f"  {trials:>3} trial(s): - (nothing registered)")


# -- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="an RLlib checkpoint directory (default: train one)")
    parser.add_argument("--workdir", help="keep the trained checkpoint and the stores here")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, default_export_workers()),
        help="N, the export processes compared with 1 (default: %(default)s)",
    )
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--every", type=float, default=5.0, help="seconds between checkpoints")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of checkpointing")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--tracking-uri", help="a tracking server (default: fresh SQLite files)")
    parser.add_argument("--max-staged", type=int, help="staging bound, checkpoints")
    parser.add_argument("--max-staged-bytes", type=int, help="staging bound, bytes")
    args = parser.parse_args()
    if args.every <= 0 or args.duration < args.every:
        parser.error("--every must be positive and --duration at least --every")
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="rllib_mlflow_throughput_") as scratch:
        workdir = Path(args.workdir or scratch).absolute()
        saved = args.checkpoint
        if not saved:
            saved = trained_checkpoint(workdir)
        saved = str(Path(saved).absolute())
        run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=workdir))
        worker_counts = sorted({1, args.workers})
        print(describe_machine())
        print(
            f"checkpoint {saved}; formats {', '.join(args.formats)}; each trial checkpoints "
            f"every {args.every:g} s for {args.duration:g} s; tracking "
            f"{args.tracking_uri or 'fresh SQLite per row'}\n"
        )
        warm_disk_cache(args.formats)
        print(HEADER, flush=True)
        cells = []
        for trials in args.trials:
            for workers in worker_counts:  # side by side, so that drift hits both alike
                cell_dir = run_dir / f"t{trials}-w{workers}"
                cell = replay(Cell(trials, workers), args, saved, cell_dir)
                print(format_row(cell), flush=True)
                cells.append(cell)
        if len(worker_counts) > 1:
            print_ratios(cells, worker_counts[-1])
        print(f"load average at the end: {load_average()} (on {os.cpu_count()} cores)")
        failed = [cell for cell in cells if cell.problems]
        for cell in failed:
            print(f"\nNOT exactly once with {cell.trials} trial(s), {cell.workers} worker(s):")
            print("\n".join(f"  {problem}" for problem in cell.problems))
        if failed:
            sys.exit(1)
        print("\nevery (trial, iteration) registered exactly once")


if __name__ == "__main__":
    main()
