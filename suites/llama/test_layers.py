"""Layer by layer: the compiled embedding, each decoder layer and the head against eager, isolated and
propagated, judged by the same tolerance policy as the end-to-end check. With --bisect-on-fail, a
failing configuration is bisected to its first diverging layer and sub-block."""

from harness import layers, plots
from harness.iree.stages import StageFailure


def test_layers(pipeline, write_record, run_dir, request, conclude):
    try:
        rec = layers.compare(pipeline)
    except StageFailure as e:
        conclude.stage_failed(e)
    rec["plot"] = plots.layer_errors(rec, run_dir / f"layers-{pipeline.config.id}.png").name
    write_record(rec)
    if rec["passed"]:
        return conclude([])
    message = f"first part over budget: {rec['first_failure']}"
    if request.config.getoption("bisect_on_fail"):
        bisection = layers.bisect(pipeline, run_dir / f"bisect-{pipeline.config.id}")
        write_record(bisection)
        message += "\n" + layers.format_bisect(bisection)
    conclude([("numerics", message)])
