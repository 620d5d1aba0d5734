"""The checks that every family's suite runs, as pytest tests (the plugin's fixtures run them): a suite's module
imports those its family takes, so `pytest suites/<family>` collects them over that family's configurations
(suites/llama adds perplexity and serving; suites/t5, an encoder, takes these two).

- test_end_to_end: the IREE-compiled model's output against eager PyTorch in the same dtype, both judged against
  an fp64 oracle by the tolerance policy (harness/numerics/tolerance.py); with --tp N > 1, also against the
  compiled TP 1 model.
- test_layers: the compiled embedding, each layer and the head against eager, isolated and propagated, judged by
  the same policy; with --bisect-on-fail, a failing configuration is bisected to its first diverging layer and
  sub-block.
"""

from harness.checks import bisect, end_to_end, layers
from harness.reporting import plots


def test_end_to_end(case, write_record, conclude):
    rec = conclude.attempt(lambda: case.run(end_to_end.check, baseline=case.tp1()))
    write_record(rec)
    verdicts = {"compiled logits": rec["verdict"], "compiled logits vs TP 1": rec["verdict_vs_tp1"]}
    conclude([("numerics", f"{what}: {v['reason']}") for what, v in verdicts.items() if v and not v["passed"]])


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
