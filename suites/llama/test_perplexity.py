"""WikiText-2 perplexity, eager and compiled on the same windows: the paired gate between them and each
engine against its golden value (harness/perplexity/gate.py says how both decide)."""

import shlex
import sys

import pytest

from harness.checks import perplexity
from harness.run.matrix import parse_shard


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
