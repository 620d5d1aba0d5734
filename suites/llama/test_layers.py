"""Layer by layer: the compiled embedding, each decoder layer and the head against eager, isolated and
propagated, judged by the same tolerance policy as the end-to-end check. With --bisect-on-fail, a
failing configuration is bisected to its first diverging layer and sub-block."""

import pytest

from harness import layers, plots
from harness.iree.stages import StageFailure


def test_layers(pipeline, write_record, run_dir, request):
    try:
        rec = layers.compare(pipeline)
    except StageFailure as e:
        write_record(pipeline.record("layers", failure={"stage": e.stage, "message": str(e)}))
        pytest.fail(f"{pipeline.config.id}: {e}\nreproducer: {e.reproducer}", pytrace=False)
    rec["plot"] = plots.layer_errors(rec, run_dir / f"layers-{pipeline.config.id}.png").name
    write_record(rec)
    if rec["passed"]:
        return
    message = f"{pipeline.config.id}: first part over budget: {rec['first_failure']}"
    if request.config.getoption("bisect_on_fail"):
        bisection = layers.bisect(pipeline, run_dir / f"bisect-{pipeline.config.id}")
        write_record(bisection)
        message += "\n" + layers.format_bisect(bisection)
    pytest.fail(message, pytrace=False)
