"""Each check run alone, as a user debugging one configuration runs it: a suite file by itself, `-k` for one
check, a quantized --dtype, under `pytest -n 2`, always into a --report-dir that does not exist yet. Each
must pass and write its records, summary and (for the layer check) plot; the default run, whose first
record comes from the end-to-end check, used to hide a layer check alone failing to write its plot."""

import json
import subprocess
import sys

import pytest

from harness.reporting import records

TOY = ["--model", "toy-gqa", "--dtype", "fp32"]


@pytest.mark.parametrize("args, kinds, plots", [
    (["suites/llama/test_end_to_end.py", *TOY], {"end_to_end"}, 0),
    (["suites/llama/test_layers.py", *TOY], {"layers"}, 1),
    (["suites/llama/test_perplexity.py", *TOY], {"skipped"}, 0),  # a toy has no text: recorded as skipped
    (["suites/llama", "-k", "layers", *TOY], {"layers"}, 1),
    (["suites/llama", "-k", "end_to_end", *TOY], {"end_to_end"}, 0),
    # -k test_perplexity: the module (test_serving.py's test_decode_perplexity would match "perplexity").
    (["suites/llama", "-k", "test_perplexity", "--model", "smollm2-135m", "--dtype", "fp32"], {"perplexity"}, 0),
    # Without the serving suite (its program would add a minute of export and compile to the default run).
    (["suites/llama", "--model", "toy-gqa", "--dtype", "q8_0", "-k", "not serving"],
     {"end_to_end", "layers", "skipped"}, 1),
    # Without the serving suite: two more serving programs to compile would add a minute to the default run.
    (["suites/llama", "-n", "2", "--model", "toy-gqa", "--dtype", "fp32,fp16", "-k", "not perplexity and not serving"],
     {"end_to_end", "layers"}, 2),
], ids=["end_to_end-file", "layers-file", "perplexity-file", "k-layers", "k-end_to_end", "k-perplexity",
        "quantized", "xdist"])
def test_check_alone_writes_its_report(args, kinds, plots, tmp_path):
    report_dir = tmp_path / "not" / "yet"
    proc = subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
                           "--report-dir", str(report_dir), "--run-name", "alone"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    run = report_dir / "alone"
    recs = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in recs} == kinds | {"plan"}
    assert not records.missing(recs)
    assert (run / "summary.md").is_file() and (run / "summary.html").is_file() and (run / "junit.xml").is_file()
    assert len(list(run.glob("layers-*.png"))) == plots
