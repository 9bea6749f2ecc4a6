"""How long one call retried by rllib-mlflow waits on a tracking server that is down, and
what it prints meanwhile.

    python benchmarks/retry_budget.py [--only-ours]

Against a closed port on 127.0.0.1 (connection refused at once), in a fresh process set up
as an export worker is, times `with_retries` (our defaults: 6 attempts, 2 to 32 s apart)
around one MLflow request, with MLflow's own HTTP retries at their defaults (7, backoff
factor 2, jitter 1 s) and with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 (our retries alone). Each
of our messages is printed with the seconds since the start, and the longest stretch
without one. The first takes about 25 minutes of waiting (no CPU).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import textwrap
import time

MEASURE = textwrap.dedent(
    """
    import sys, time
    from mlflow import MlflowClient
    from rllib_mlflow.retries import with_retries
    from rllib_mlflow.tune.worker import prepare_worker_process

    prepare_worker_process()
    client = MlflowClient(sys.argv[1])
    start = time.monotonic()
    try:
        with_retries(lambda: client.search_experiments(max_results=1))
    except Exception as error:
        print(f"gave up after {time.monotonic() - start:.0f} s: {type(error).__name__}")
    """
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on return: connections are refused


def measure(label: str, extra_env: dict[str, str]) -> None:
    print(f"{label}:", flush=True)
    env = {**os.environ, **extra_env}
    command = [sys.executable, "-c", MEASURE, f"http://127.0.0.1:{closed_port()}"]
    start = last = time.monotonic()
    longest = 0.0
    with subprocess.Popen(
        command, env=env, stderr=subprocess.STDOUT, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.monotonic()
            longest, last = max(longest, now - last), now
            print(f"  {now - start:7.1f} s  {line.rstrip()}", flush=True)
    print(f"  longest stretch without a line: {longest:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only-ours", action="store_true", help="skip MLflow's defaults")
    args = parser.parse_args()
    unset = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_HTTP_REQUEST_")}
    os.environ.clear()
    os.environ.update(unset)
    if not args.only_ours:
        measure("MLflow's HTTP retries at their defaults, under ours", {})
    measure("our retries alone (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0)", {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"
    })  # fmt: skip


if __name__ == "__main__":
    main()
