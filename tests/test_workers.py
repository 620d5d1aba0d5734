"""IREE's CPU devices get as many workers as eager has threads, and they are really used: on a machine with
two or more cores, a compiled prefill's work is spread over that many threads (each thread's CPU time, from
/proc, so that a busy shared machine slows the test without failing it). Left to its default topology, IREE
3.9 made one worker on 2-core VMs with private L2 caches: one thread did all the work."""

import os
from pathlib import Path

import pytest
import torch

from harness.common.host import machine
from harness.run.case import Case
from harness.run.config import RunConfig


def thread_cpu_ticks() -> dict[str, int]:
    """user + system clock ticks of each thread of this process."""
    ticks = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        ticks[task.name] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks


@pytest.mark.skipif(torch.get_num_threads() < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs 2 or more threads and Linux's per-thread CPU times")
def test_compiled_prefill_uses_every_thread():
    p = Case(RunConfig("toy-tp8", "fp32", seq_len=1024))
    engine = p.candidate.forward()
    engine.logits(p.inputs.tokens)  # first call: module load, page-in, worker threads started
    before = thread_cpu_ticks()
    for _ in range(5):
        engine.logits(p.inputs.tokens)
    after = thread_cpu_ticks()
    work = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    n = torch.get_num_threads()
    assert machine()["iree_workers"] == n
    # Each of the n busiest threads carries a real share of the work (with one worker, the second carries ~0).
    assert work[n - 1] > 0.2 * work[0], f"CPU ticks of the busiest threads: {work[:n + 1]} with {n} workers"
    assert f"--task_topology_group_count={n}" in engine.module.reproducer("forward", [])
