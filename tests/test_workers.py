"""IREE's CPU devices get as many workers as eager has threads, and they are really used: on a machine with
two or more cores, a compiled prefill keeps more than one core busy (CPU time over wall time). Left to its
default topology, IREE 3.9 made one worker on 2-core VMs with private L2 caches (ratio 1.0)."""

import time

import pytest
import torch

from harness.common.host import machine
from harness.run.case import Case
from harness.run.config import RunConfig


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs 2 or more threads to show parallel workers")
def test_compiled_prefill_uses_every_thread():
    p = Case(RunConfig("toy-tp8", "fp32", seq_len=1024))
    engine = p.candidate.forward()
    engine.logits(p.inputs.tokens)  # first call: module load, page-in
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(5):
        engine.logits(p.inputs.tokens)
    busy_cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
    assert machine()["iree_workers"] == torch.get_num_threads()
    assert busy_cores > 1.4, f"{busy_cores:.2f} cores busy with {torch.get_num_threads()} workers"
    assert f"--task_topology_group_count={torch.get_num_threads()}" in engine.module.reproducer("forward", [])
