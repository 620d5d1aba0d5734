"""The checks as pytest tests (the plugin's fixtures run them): each family's suite imports those its family takes,
so `pytest suites/<family>` collects them over that family's configurations (suites/llama and suites/mixtral take
every one; suites/t5, an encoder, end to end and layers).

- test_end_to_end: the IREE-compiled model's output against eager PyTorch in the same dtype, both judged against
  an fp64 oracle by the tolerance policy (harness/numerics/tolerance.py); with --tp N > 1, also against the
  compiled TP 1 model.
- test_layers: the compiled embedding, each layer and the head against eager, isolated and propagated, judged by
  the same policy; with --bisect-on-fail, a failing configuration is bisected to its first diverging layer and
  sub-block.
- test_perplexity: WikiText-2 perplexity, eager and compiled on the same windows: the paired gate between them and
  each engine against its golden value (harness/perplexity/gate.py says how both decide).
- test_decode, test_cache_state, test_batching, test_chunked_prefill, test_greedy, test_decode_perplexity: the
  prefill_bs{N} / decode_bs{N} programs over a paged KV cache, driven as a server drives them
  (harness/checks/serving.py says what each does), judged by the same policy; --nightly runs longer decodes, batches
  and generations; with --bisect-on-fail a failing decode is bisected to its step, layer and sub-block.
"""

import shlex
import sys

import pytest

from harness.checks import bisect, end_to_end, layers, perplexity, serving
from harness.reporting import plots
from harness.run.matrix import parse_shard


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


def test_perplexity(case, write_record, pytestconfig, golden_dir, conclude, run_dir):
    opt = pytestconfig.getoption
    config = case.config
    nightly = opt("nightly")
    reason = (f"perplexity: {config.name} is a random toy without a tokenizer" if not case.spec.real_text
              else f"perplexity: {config.dtype} is in the nightly tier (--nightly, or --ppl-dtypes)"
              if not nightly and config.dtype not in opt("ppl_dtypes").split(",") else None)
    if reason:  # in the report, not only in pytest's output
        write_record({"kind": "skipped", "config": config.id, "check": "perplexity", "reason": reason})
        pytest.skip(reason)

    def check():
        windows = perplexity.windows(case.reference, None if nightly else opt("ppl_windows"), opt("ppl_n_ctx"),
                                     opt("ppl_scheme"), opt("dataset"), opt("text_form"))
        return case.run(perplexity.evaluate, inputs=windows, golden_dir=golden_dir, golden_required=nightly,
                        update_golden=opt("update_golden"), command=shlex.join(["pytest", *sys.argv[1:]]),
                        golden_command=config.command("perplexity"), journal=perplexity.journal_dir(run_dir, config.id),
                        shard=opt("ppl_shard") and parse_shard(opt("ppl_shard"), "--ppl-shard"),
                        eager_cache=opt("eager_cache"))

    rec = conclude.attempt(check)
    write_record(rec)
    print(rec["summary"])
    conclude([("perplexity", g["message"]) for g in rec["gates"] if g["verdict"] not in ("pass", "ungated")])


def serve(check, case, write_record, conclude, nightly: bool, prompts: bool = False, bisect_dir=None) -> None:
    """Run `check` on the case and conclude on its failures; `bisect_dir`: where a failing decode is bisected
    (--bisect-on-fail) to its step, layer and sub-block."""
    plan = case.serving_plan(serving.NIGHTLY if nightly else serving.QUICK)
    inputs = (lambda: case.prompt_inputs(plan.prompts, plan.prompt_len)) if prompts else \
        (lambda: case.token_inputs(plan.tokens))
    rec = conclude.attempt(lambda: case.run(check, inputs=inputs(), plan=plan))
    write_record(rec)
    messages = rec["failures"]
    cannot = ("runs at TP 1 only (its one-layer program is not sharded); rerun this configuration with --tp 1 "
              "--bisect-on-fail" if case.config.tp > 1 else case.candidate.unsupported("bisect_decode"))
    if messages and bisect_dir is not None and cannot:
        messages = [*messages, f"bisect through decode: {cannot}"]
    elif messages and bisect_dir is not None:
        bisection = case.run(serving.bisect_decode, inputs=case.token_inputs(plan.tokens), plan=plan,
                             artifacts=bisect_dir)
        write_record(bisection)
        messages = [*messages, serving.format_bisect_decode(bisection)]
    conclude([("numerics", message) for message in messages])


def test_decode(case, write_record, conclude, nightly, request, run_dir):
    bisect_dir = run_dir / f"bisect-decode-{case.config.id}" if request.config.getoption("bisect_on_fail") else None
    serve(serving.decode, case, write_record, conclude, nightly, bisect_dir=bisect_dir)


def test_cache_state(case, write_record, conclude, nightly):
    serve(serving.cache_state, case, write_record, conclude, nightly)


def test_batching(case, write_record, conclude, nightly):
    serve(serving.batching, case, write_record, conclude, nightly)


def test_chunked_prefill(case, write_record, conclude, nightly):
    serve(serving.chunked_prefill, case, write_record, conclude, nightly)


def test_greedy(case, write_record, conclude, nightly):
    serve(serving.greedy, case, write_record, conclude, nightly)


def test_decode_perplexity(case, write_record, conclude, nightly):
    serve(serving.decode_perplexity, case, write_record, conclude, nightly, prompts=True)
