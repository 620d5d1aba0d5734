"""End to end: the IREE-compiled model's logits against eager PyTorch in the same dtype, both judged
against an fp64 oracle by the tolerance policy (harness/numerics/tolerance.py); with --tp N > 1, also
against the compiled TP 1 model."""

from harness.checks import end_to_end


def test_end_to_end(case, write_record, conclude):
    rec = conclude.attempt(lambda: case.run(end_to_end.check, baseline=case.tp1()))
    write_record(rec)
    verdicts = {"compiled logits": rec["verdict"], "compiled logits vs TP 1": rec["verdict_vs_tp1"]}
    conclude([("numerics", f"{what}: {v['reason']}") for what, v in verdicts.items() if v and not v["passed"]])
