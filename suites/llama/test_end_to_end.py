"""End to end: the IREE-compiled model's logits against eager PyTorch in the same dtype, both judged
against an fp64 oracle by the tolerance policy (harness/numerics/tolerance.py); with --tp N > 1, also
against the compiled TP 1 model."""

import pytest

from harness import end_to_end
from harness.iree.stages import StageFailure


def test_end_to_end(pipeline, write_record):
    try:
        rec = end_to_end.check(pipeline)
    except StageFailure as e:
        write_record(pipeline.record("end_to_end", failure={"stage": e.stage, "message": str(e)}))
        pytest.fail(f"{pipeline.config.id}: {e}\nreproducer: {e.reproducer}", pytrace=False)
    write_record(rec)
    verdict, vs_tp1 = rec["verdict"], rec["verdict_vs_tp1"]
    assert verdict["passed"], f"{pipeline.config.id}: compiled logits: {verdict['reason']}"
    assert vs_tp1 is None or vs_tp1["passed"], f"{pipeline.config.id}: compiled logits vs TP 1: {vs_tp1['reason']}"
