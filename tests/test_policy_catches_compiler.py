"""The tolerance policy against a real compiler defect, not a synthetic one: without data tiling, the
llvm-cpu backend of IREE 3.9 rounds fp16 matmul accumulators at every step. The end-to-end check must
fail that build and pass the default one (which enables data tiling)."""


from harness.checks import end_to_end
from harness.iree import targets
from harness.run.case import Case
from harness.run.config import RunConfig


def test_default_flags_pass():
    rec = Case(RunConfig("toy-tp8", "fp16")).run(end_to_end.check)
    assert rec["verdict"]["passed"], rec["verdict"]["reason"]


def test_fp16_accumulation_rounding_is_caught(monkeypatch):
    without = [f for f in targets.TARGET_FLAGS["local"] if "data-tiling" not in f]
    assert len(without) < len(targets.TARGET_FLAGS["local"])
    monkeypatch.setitem(targets.TARGET_FLAGS, "local", without)
    rec = Case(RunConfig("toy-tp8", "fp16")).run(end_to_end.check)
    assert not rec["verdict"]["passed"], rec["verdict"]["reason"]
