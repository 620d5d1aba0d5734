"""The serving path: the prefill_bs{N} / decode_bs{N} programs over a paged KV cache, driven as a server
drives them (harness/checks/serving.py says what each check does). Each test is one check, judged by the same
tolerance policy as the end-to-end check; --nightly runs longer decodes, batches and generations; with
--bisect-on-fail a failing decode is bisected to its step, layer and sub-block."""

import pytest

from harness.checks import serving


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


@pytest.fixture
def nightly(pytestconfig) -> bool:
    return pytestconfig.getoption("nightly")


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
