"""The export worker process yields the CPU to training and stays out of Ctrl-C.

Linux gives each session its own scheduling group (autogroup) when
/proc/sys/kernel/sched_autogroup_enabled is 1, as on this machine: a worker in a session of
its own would get as much CPU as all of training together, nice 19 or not. So the worker
must share the driver's session (and autogroup) and run at nice 19 and SCHED_IDLE (Ray runs
training at nice 15), in a process group of its own so that the terminal's Ctrl-C reaches the
driver only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rllib_mlflow.tune.worker import WorkerProcess

IDLE = getattr(os, "SCHED_IDLE", os.SCHED_OTHER)  # where Linux has no SCHED_IDLE, nice only


def _priority(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16]), os.sched_getscheduler(pid)  # nice: field 19 of proc(5)


def test_the_worker_shares_the_drivers_session_at_the_lowest_priority():
    worker = WorkerProcess(lambda *reply: None, {})
    worker.start()
    try:
        pid = worker.pid
        assert pid is not None  # started
        deadline = time.monotonic() + 30
        while _priority(pid) != (19, IDLE) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _priority(pid) == (19, IDLE)  # Ray runs training at nice 15: 19 is barely below
        assert os.getsid(pid) == os.getsid(0), "a session of its own escapes nice"
        assert os.getpgid(pid) != os.getpgid(0), "the terminal's Ctrl-C would reach it"
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():  # kernels with CONFIG_SCHED_AUTOGROUP
            assert autogroup.read_text() == Path("/proc/self/autogroup").read_text()
    finally:
        worker.stop()


def test_onnxruntime_keeps_to_the_workers_one_thread(tmp_path, monkeypatch):
    """The worker sets OMP_NUM_THREADS=1, which onnxruntime ignores on its own: its parity
    sessions would start a thread per core and spin on them."""
    import onnx
    from onnx import TensorProto, helper

    from rllib_mlflow.policy.serving import onnx_session

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert onnx_session(str(path)).get_session_options().intra_op_num_threads == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert onnx_session(str(path)).get_session_options().intra_op_num_threads == 0
