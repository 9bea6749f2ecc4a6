"""A chaos soak: what Tune training with MLflowCheckpointCallback registers, prints and
leaves behind while everything around it fails.

    python benchmarks/soak.py [--minutes 8] [--seed 0]

A real `mlflow server` (SQLite, proxied artifacts) on 127.0.0.1; PPO CartPole under Tune,
2 trials of 2-s iterations, a checkpoint each, 2 export workers. Meanwhile, every 5 to 15 s
at random: the server SIGKILLed and restarted on the same port 3 to 15 s later (twice as
likely as the others), an export worker SIGKILLed, or the export scratch disk
(RLLIB_MLFLOW_TMPDIR: a 64 MiB tmpfs of this soak's own mount namespace) filled for 15 s.
Once a quarter of the way is past and 4 checkpoints are journaled, the driver is SIGKILLed
and the experiment restored (`Tuner.restore`). At 6/10 the trials are told to stop; the
chaos ends at 8/10; the driver is SIGKILLed again if it still runs at 9/10 (its final
flush cut short). Then `rllib-mlflow sync` registers the rest, with the server up. The
output, with the soak's own events marked `## soak:`, is in WORK/output.log.

Prints: checkpoints on disk, versions, duplicates, missing, the journal's pending tasks,
leaked bytes (staged copies + export scratch dirs), tracebacks, the longest silent stretch
of output (overall, and while the server was down), and what the chaos did. Exits 1 if a
checkpoint is missing or doubled, a byte leaked or a traceback was printed. The sync at
the end runs until done (it is not part of the bound).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rllib_mlflow.tune.journal import JOURNAL_FILE  # noqa: E402
from tests.mlflow_server import (  # noqa: E402
    VENV_BIN,
    free_port,
    start_tracking_server,
    subprocess_env,  # noqa: E402
)
from tests.tune_job import EXPERIMENT, MODEL_NAME  # noqa: E402

IN_NAMESPACE = "RLLIB_MLFLOW_SOAK_NAMESPACE"
SCRATCH_MB = 64
JOB = """
import json, sys
import ray
from tests import tune_job
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
results = tune_job.run(**json.loads(sys.argv[1]))
ray.shutdown()
print("soak: job done", flush=True)
"""


class Output:
    """Every line our processes print, with the moment it came."""

    def __init__(self, log: Path):
        self.start = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._log = open(log, "a", buffering=1)  # noqa: SIM115 (open for the whole soak)
        self._lock = threading.Lock()

    def add(self, moment: float, line: str) -> None:
        with self._lock:
            self.lines.append((moment, line))
            self._log.write(f"[{moment - self.start:6.1f}] {line}\n")

    def note(self, event: str) -> None:
        """What the soak did, in the log only (not output of the processes it tests)."""
        with self._lock:
            self._log.write(f"[{time.monotonic() - self.start:6.1f}] ## soak: {event}\n")

    def follow(self, process: subprocess.Popen) -> threading.Thread:
        def read() -> None:
            assert process.stdout is not None
            for raw in process.stdout:
                self.add(time.monotonic(), raw.decode(errors="replace").rstrip())

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread


class Soak:
    def __init__(self, work: Path, minutes: float, seed: int):
        self.work, self.start = work, time.monotonic()
        self.bound_s = minutes * 60
        self.random = random.Random(seed)
        self.scratch = work / "scratch"
        self.experiment = work / "results" / EXPERIMENT
        self.output = Output(work / "output.log")
        self.port = free_port()
        self.server = start_tracking_server(work / "server", port=self.port)
        self.uri = self.server.uri
        self.down: list[tuple[float, float]] = []  # server outages (monotonic)
        self.counts: collections.Counter[str] = collections.Counter()
        self.driver: subprocess.Popen | None = None
        self.seen_workers: set[int] = set()  # to wait for the orphans before sync
        self.server_up_until = 0.0

    # -- processes -------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return subprocess_env(
            PYTHONPATH=str(ROOT),
            RAY_AUTH_MODE="disabled",
            RLLIB_MLFLOW_TMPDIR=str(self.scratch),
            RLLIB_MLFLOW_EXPORT_WORKERS="2",
        )

    def start_job(self, restore: bool) -> None:
        args = {
            "storage": str(self.work / "results"),
            "tracking_uri": self.uri,
            "iterations": 10_000,  # until the stop file
            "restore": restore,
            "num_to_keep": None,
            "seconds_per_iteration": 2.0,
            "stop_file": str(self.work / "stop"),
            "callback_kwargs": {"formats": ["onnx"]},
        }
        self.driver = subprocess.Popen(
            [sys.executable, "-c", JOB, json.dumps(args)],
            cwd=ROOT,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its group holds Ray's processes (not the workers')
        )
        self.output.follow(self.driver)
        # A driver starting during an outage is refused by the callback's setup(), by design
        # (told before training): the server stays up until its trials have begun.
        self.server_up_until = self.elapsed() + 60

    def kill_driver(self) -> None:
        assert self.driver is not None
        self.workers()  # seen, so that sync waits for them once orphaned
        if self.driver.poll() is None:
            os.kill(self.driver.pid, signal.SIGKILL)
            self.counts["driver SIGKILLs"] += 1
            self.output.note("driver SIGKILLed")
        try:
            os.killpg(self.driver.pid, signal.SIGKILL)  # Ray's daemons
        except ProcessLookupError:
            pass
        self.driver.wait(timeout=60)

    def workers(self) -> list[int]:
        if self.driver is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.driver.pid and b"rllib_mlflow.tune.worker" in cmdline:
                found.append(int(entry.name))
        self.seen_workers.update(found)
        return found

    # -- chaos -----------------------------------------------------------------------------

    def flap_server(self) -> None:
        os.killpg(self.server.process.pid, signal.SIGKILL)
        self.server.process.wait(timeout=30)
        down_at = time.monotonic()
        self.output.note("server SIGKILLed")
        time.sleep(self.random.uniform(3, 15))
        log = f"server-{len(self.down) + 1}.log"
        self.server = start_tracking_server(self.work / "server", port=self.port, log_name=log)
        self.down.append((down_at, time.monotonic()))
        self.output.note(f"server up again after {self.down[-1][1] - down_at:.0f} s")

    def kill_a_worker(self) -> None:
        workers = self.workers()
        if workers:
            victim = self.random.choice(workers)
            os.kill(victim, signal.SIGKILL)
            self.counts["worker SIGKILLs"] += 1
            self.output.note(f"export worker {victim} SIGKILLed")

    def fill_scratch(self) -> None:
        """Fill the scratch disk; freed 15 s later (meanwhile the chaos goes on)."""
        filler = self.scratch / "filler"
        if filler.exists():
            return
        with open(filler, "wb") as stream:
            try:
                while True:
                    stream.write(b"\0" * (1 << 20))
                    stream.flush()
            except OSError:
                pass
        self.counts["scratch disk filled for 15 s"] += 1
        self.output.note("scratch disk full")

        def free() -> None:
            filler.unlink()
            self.output.note("scratch disk freed")

        threading.Timer(15, free).start()

    def chaos(self, until_s: float) -> None:
        """One fault every 5 to 15 s until `until_s` into the soak (the server flapping
        twice as often as the others); the driver killed and the experiment restored once a
        quarter of the way is past and 4 checkpoints are journaled; the trials told to stop
        at 6/10 of the way."""
        driver_killed = stop_told = False
        while self.elapsed() < until_s:
            time.sleep(self.random.uniform(5, 15))
            if not driver_killed and self.elapsed() > self.bound_s / 4 and self.queued() >= 4:
                self.kill_driver()
                self.start_job(restore=True)
                driver_killed = True
            if not stop_told and self.elapsed() > self.bound_s * 0.6:
                (self.work / "stop").touch()
                self.output.note("trials told to stop")
                stop_told = True
            faults = [self.kill_a_worker]
            if self.elapsed() > self.server_up_until:
                faults += [self.flap_server, self.flap_server]
            if os.environ.get(IN_NAMESPACE):  # else the scratch is a real disk: never fill it
                faults.append(self.fill_scratch)
            self.random.choice(faults)()
        (self.work / "stop").touch()
        self.output.note("chaos over")

    def queued(self) -> int:
        journal = self.experiment / JOURNAL_FILE
        return journal.read_text().count('"event": "queued"') if journal.exists() else 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        self.start_job(restore=False)
        self.chaos(until_s=self.bound_s * 0.8)
        assert self.driver is not None
        try:
            self.driver.wait(timeout=max(1.0, self.bound_s * 0.9 - self.elapsed()))
        except subprocess.TimeoutExpired:
            pass
        self.kill_driver()  # Ray's daemons in any case; the driver itself if it still ran
        trained_s = self.elapsed()
        self.wait_for_orphans()
        sync = subprocess.Popen(
            [os.path.join(VENV_BIN, "rllib-mlflow"), "sync", str(self.experiment)]
            + ["--tracking-uri", self.uri],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output.note("sync started")
        self.output.follow(sync).join(timeout=1800)
        sync.wait(timeout=60)
        return {"trained_s": trained_s, "total_s": self.elapsed(), "sync_rc": sync.returncode}

    def wait_for_orphans(self, timeout_s: float = 120) -> None:
        """Workers of a killed driver finish the task in hand, then stop by themselves."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_alive(p) for p in self.seen_workers):
            time.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- figures -------------------------------------------------------------------------------


def checkpoints_on_disk(experiment: Path) -> set[tuple[str, int]]:
    from rllib_mlflow.rllib.layout import read_training_iteration

    found = set()
    for checkpoint in experiment.glob("*/checkpoint_*"):
        trial = re.search(r"_([0-9a-f]{5}_\d{5})_", checkpoint.parent.name)
        if trial:
            found.add((trial.group(1), read_training_iteration(str(checkpoint))))
    return found


def registered(uri: str) -> list[tuple[str, int]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'", max_results=100_000)
    return [(v.tags["trial_id"], int(v.tags["training_iteration"])) for v in versions]


def size(paths: list[Path]) -> int:
    return sum(
        f.stat().st_size for p in paths for f in [p, *p.rglob("*")] if f.is_file()
    )  # fmt: skip


def longest_silences(lines: list[tuple[float, str]], down: list[tuple[float, float]]):
    """The longest gap between two lines overall, and the longest stretch of a server
    outage with no line (from its start, or the last line, to the next line or its end);
    each as (seconds, from, to)."""
    moments = sorted(t for t, _ in lines)
    overall = max(
        ((b - a, a, b) for a, b in zip(moments, moments[1:], strict=False)), default=(0, 0, 0)
    )
    during = (0.0, 0.0, 0.0)
    for start, end in down:
        marks = [start, *(t for t in moments if start < t < end), end]
        during = max(during, *((b - a, a, b) for a, b in zip(marks, marks[1:], strict=False)))
    return overall, during


def report(soak: Soak, timing: dict) -> int:
    from rllib_mlflow.scratch import EXPORT_PREFIX
    from rllib_mlflow.tune.journal import Journal
    from rllib_mlflow.tune.staging import STAGING_DIR

    keys, expected = registered(soak.uri), checkpoints_on_disk(soak.experiment)
    counted = collections.Counter(keys)
    duplicates = sum(n - 1 for n in counted.values() if n > 1)
    missing = len(expected - set(counted))
    staged = [soak.experiment / STAGING_DIR] if (soak.experiment / STAGING_DIR).exists() else []
    exports = list(soak.scratch.glob(f"{EXPORT_PREFIX}*"))
    leaked = size(staged) + size(exports)
    lines = [(t, line) for t, line in soak.output.lines if line.strip()]
    text = "\n".join(line for _, line in lines)
    tracebacks = text.count("Traceback")
    overall, during = longest_silences(lines, soak.down)
    outages = [end - start for start, end in soak.down]
    pending = len(Journal(soak.experiment).pending())
    figures = [
        f"chaos for {timing['trained_s'] / 60:.1f} min; with sync {timing['total_s'] / 60:.1f} min",
        f"checkpoints on disk: {len(expected)}; versions: {len(keys)}; "
        f"duplicates: {duplicates}; missing: {missing}",
        f"journal tasks pending after sync: {pending}; sync exited {timing['sync_rc']}",
        f"leaked bytes: {leaked} (staged copies {size(staged)}, "
        f"{len(exports)} export dirs {size(exports)})",
        f"tracebacks printed: {tracebacks}; lines printed: {len(lines)}",
        f"longest silent stretch: {_span(overall, soak)}; while the server was down: "
        f"{_span(during, soak)}",
        f"server SIGKILLs: {len(outages)} ({sum(outages):.0f} s down in all, "
        f"longest {max(outages, default=0):.0f} s); "
        + "; ".join(f"{k}: {v}" for k, v in sorted(soak.counts.items())),
    ]
    figures.append("load average at the end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print("\n".join(figures))
    for phrase in TOLD:
        print(f"  lines with {phrase!r}: {text.count(phrase)}")
    return 0 if not (duplicates or missing or leaked or tracebacks) else 1


def _span(gap: tuple[float, float, float], soak: Soak) -> str:
    seconds, start, end = gap
    return f"{seconds:.0f} s (at {start - soak.start:.0f}-{end - soak.start:.0f} s)"


TOLD = (
    "cannot reach the tracking server",
    "still unreachable",
    "reachable again",
    "died (SIGKILL)",
    "No space left on device",
    "not registered yet",
)


def in_own_namespace() -> None:
    """Re-run this script in a user and mount namespace of its own with a tmpfs as the
    scratch disk, which it can fill (and which goes with it)."""
    if os.environ.get(IN_NAMESPACE) or shutil.which("unshare") is None:
        return
    work = Path(sys.argv[sys.argv.index("--work") + 1]) if "--work" in sys.argv else None
    assert work is not None
    (work / "scratch").mkdir(parents=True, exist_ok=True)
    mount = f'mount -t tmpfs -o size={SCRATCH_MB}m tmpfs "{work / "scratch"}" && exec "$@"'
    os.environ[IN_NAMESPACE] = "1"
    command = ["unshare", "-rm", "sh", "-c", mount, "sh", sys.executable, *sys.argv]
    os.execvp("unshare", command)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", help="working directory (default: a new one in /tmp)")
    args = parser.parse_args()
    if args.work is None:
        import tempfile

        sys.argv += ["--work", tempfile.mkdtemp(prefix="rllib-mlflow-soak-")]
        args.work = sys.argv[-1]
    in_own_namespace()
    work = Path(args.work)
    if not os.environ.get(IN_NAMESPACE):
        print("soak: no unshare(1): the scratch disk is never filled", flush=True)
    soak = Soak(work, args.minutes, args.seed)
    print(f"soak: {work}, server {soak.uri}, for {args.minutes:g} min", flush=True)
    print("load average at the start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    try:
        timing = soak.run()
        code = report(soak, timing)
    finally:
        if soak.driver is not None and soak.driver.poll() is None:
            soak.kill_driver()
        soak.server.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
