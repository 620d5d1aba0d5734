"""Perplexity's unit of work is the window (perplexity/journal.py): a run killed with SIGKILL resumes from the windows
it finished and ends with statistics bit-identical to an uninterrupted run's; three `--ppl-shard` runs joined by
`report merge` give exactly one run's statistics, gated as one run (SmolLM2 fp32, 128-token windows)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.checks import perplexity
from harness.common.errors import HarnessError
from harness.data.dataset import BUNDLED_PATH
from harness.perplexity.journal import Journal
from harness.perplexity.stats import Accumulator
from harness.reporting import merge, records
from harness.run.case import Case
from harness.run.config import RunConfig

PROJECT = Path(__file__).resolve().parents[1]
CONFIG = "smollm2-135m-fp32-tp1"


@pytest.fixture(scope="module")
def short_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "short.txt"
    path.write_text(BUNDLED_PATH.read_text(encoding="utf-8")[:14000])
    return path


def test_stored_window_results_give_the_same_statistics_bit_for_bit(tmp_path):
    gen = torch.Generator().manual_seed(0)
    direct, replayed = Accumulator(["a", "b"]), Accumulator(["a", "b"])
    journal = Journal.open(tmp_path, {"test": 1})
    for index in range(5):
        targets = torch.randint(0, 50, (37,), generator=gen)
        logits = [torch.randn(37, 50, generator=gen) for _ in range(2)]
        journal.save(index, [direct.add(targets, logits)])
    for index in journal.indices():
        (result,) = journal.load(index)
        replayed.add_result(result)
    assert json.dumps(direct.result().to_record()) == json.dumps(replayed.result().to_record())
    with pytest.raises(HarnessError, match="holds the windows of another perplexity scoring"):
        Journal.open(tmp_path, {"test": 2})


def stats_of(run_dir: Path) -> dict:
    (rec,) = [r for r in records.read(run_dir / "records.jsonl") if r["kind"] == "perplexity"]
    return rec


@pytest.mark.slow
def test_shards_merge_into_exactly_one_run(short_text, tmp_path):
    case = Case(RunConfig("smollm2-135m", "fp32"))
    windows = perplexity.windows(case.reference, 9, 128, dataset=str(short_text))

    def scored(name: str, shard=None) -> dict:
        rec = case.run(perplexity.evaluate, inputs=windows, golden_dir=tmp_path / "golden", shard=shard,
                       journal=perplexity.journal_dir(tmp_path / name, CONFIG))
        records.append(tmp_path / name / "records.jsonl", rec)
        return rec

    whole = scored("whole")
    shards = [scored(f"shard{i}", (i, 3)) for i in range(3)]
    assert [s["stats"]["n_windows"] for s in shards] == [3, 3, 3]
    assert all("report merge` of the shards gates the whole run" in s["gates"][-1]["message"] for s in shards)
    merge.merge(tmp_path / "merged", [tmp_path / f"shard{i}" for i in range(3)], tmp_path / "golden")
    joined = stats_of(tmp_path / "merged")
    assert joined["joined_shards"] == ["1/3", "2/3", "3/3"]
    whole_stats = stats_of(tmp_path / "whole")["stats"]
    assert json.dumps(joined["stats"], sort_keys=True) == json.dumps(whole_stats, sort_keys=True)
    assert [g["verdict"] for g in joined["gates"]] == [g["verdict"] for g in whole["gates"]]
    merge.merge(tmp_path / "partial", [tmp_path / "shard0", tmp_path / "shard2"], tmp_path / "golden")
    partial = stats_of(tmp_path / "partial")
    assert not partial["passed"] and "shards 1/3, 3/3 are not one whole split" in partial["failure"]["message"]


@pytest.mark.slow
@pytest.mark.nightly  # 39 s: three SmolLM2 perplexity processes; the journal's merge of shards runs in the default tier
def test_a_killed_run_resumes_to_the_same_statistics(short_text, tmp_path):
    command = [sys.executable, "-m", "harness", "perplexity", "--model", "smollm2-135m", "--dtype", "fp32",
               "--windows", "12", "--ppl-n-ctx", "128", "--dataset", str(short_text), "--report-dir", str(tmp_path),
               "--golden-dir", str(tmp_path / "golden")]
    journal = perplexity.journal_dir(tmp_path / "killed", CONFIG)
    proc = subprocess.Popen([*command, "--run-name", "killed"], cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(list(journal.glob("window-*.npz"))) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no cleanup runs
    proc.wait()
    finished = len(list(journal.glob("window-*.npz")))
    assert 4 <= finished < 12, finished
    # The refusals themselves, without two more processes (the CLI answers a HarnessError in one line with exit
    # status 2: tests/test_bad_input.py, and this refusal through it: tests/test_nightly_gate.py).
    with pytest.raises(HarnessError, match="--resume it"):
        records.new_run_dir(tmp_path, "killed", resume=False)
    with pytest.raises(HarnessError, match="--resume: name the run to resume"):
        records.new_run_dir(tmp_path, None, resume=True)
    for run in (["--run-name", "killed", "--resume"], ["--run-name", "whole"]):
        done = subprocess.run([*command, *run], cwd=PROJECT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    resumed, whole = stats_of(tmp_path / "killed"), stats_of(tmp_path / "whole")
    assert json.dumps(resumed["stats"], sort_keys=True) == json.dumps(whole["stats"], sort_keys=True)
    assert resumed["timings"][0]["prefill_tokens"] == 128 * (12 - finished)  # only the unfinished were scored
    assert np.isfinite(resumed["stats"]["engines"][0]["ppl"]["value"])
