"""The export worker process yields the CPU to training and stays out of Ctrl-C.

Linux gives each session its own scheduling group (autogroup) when
/proc/sys/kernel/sched_autogroup_enabled is 1, as on this machine: a worker in a session of
its own would get as much CPU as all of training together, nice 19 or not. So the worker
must share the driver's session (and autogroup) and run at nice 19, in a process group of
its own so that the terminal's Ctrl-C reaches the driver only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rllib_mlflow.tune.worker import WorkerProcess


def _nice(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of proc(5), counted after the command name


def test_the_worker_shares_the_drivers_session_at_the_lowest_priority():
    worker = WorkerProcess(lambda *reply: None, {})
    worker.start()
    try:
        pid = worker.pid
        deadline = time.monotonic() + 30
        while _nice(pid) != 19 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _nice(pid) == 19
        assert os.getsid(pid) == os.getsid(0), "a session of its own escapes nice"
        assert os.getpgid(pid) != os.getpgid(0), "the terminal's Ctrl-C would reach it"
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():  # kernels with CONFIG_SCHED_AUTOGROUP
            assert autogroup.read_text() == Path("/proc/self/autogroup").read_text()
    finally:
        worker.stop()
