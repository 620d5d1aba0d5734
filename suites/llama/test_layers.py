"""Layer by layer: the compiled embedding, each decoder layer and the head against eager, isolated and
propagated, judged by the same tolerance policy as the end-to-end check. With --bisect-on-fail, a
failing configuration is bisected to its first diverging layer and sub-block."""

from harness.checks import bisect, layers
from harness.reporting import plots


def test_layers(case, write_record, run_dir, request, conclude):
    rec = conclude.attempt(lambda: case.run(layers.compare))
    rec["plot"] = plots.layer_errors(rec, run_dir / f"layers-{case.config.id}.png").name
    write_record(rec)
    if rec["passed"]:
        return conclude([])
    message = f"first part over budget: {rec['first_failure']}"
    if request.config.getoption("bisect_on_fail"):
        bisection = case.run(bisect.bisect, artifacts=run_dir / f"bisect-{case.config.id}")
        write_record(bisection)
        message += "\n" + bisect.format_bisect(bisection)
    conclude([("numerics", message)])
