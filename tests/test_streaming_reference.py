"""The streaming reference (reference/eager.py StreamingParts, StreamingModel): the layer check's eager and oracle
parts built one at a time from lazily read weights give, bit for bit, the built model's parts while holding one part's
parameters; a whole model run part by part (--eager-memory streaming) computes the built model's logits; a fault
planted in the candidate is still bisected to its layer and sub-block."""

import pytest
import torch

from harness.checks import bisect, end_to_end
from harness.common.errors import HarnessError
from harness.reference import eager
from harness.reference.eager import Reference, StreamingModel, part_names, resident_bytes
from harness.reference.registry import resolve
from harness.reference.weights import LazyTensors
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import weight_fault


def held(model: torch.nn.Module) -> set[str]:
    """The model's parts that hold tensors off the meta device: "embed_tokens", "layers.<i>", "norm", "lm_head"."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return {".".join(n.split(".")[:2 if n.startswith("layers.") else 1]) for n, t in tensors if not t.is_meta}


def assert_parts_equal(reference: Reference, which: str, tokens: torch.Tensor):
    whole = (reference.eager if which == "eager" else reference.oracle).parts()
    streamed = reference.parts(which)
    config = reference.weights.config
    assert streamed.dtype == whole.dtype and streamed.n_layers == whole.n_layers
    h = whole.embed(tokens)
    assert torch.equal(streamed.embed(tokens), h)
    for i in range(config.n_layers):
        (out, taps), (s_out, s_taps) = whole.layer(i, h), streamed.layer(i, h)
        assert torch.equal(s_out, out) and taps.keys() == s_taps.keys()
        assert all(torch.equal(s_taps[k], taps[k]) for k in taps), f"layer {i}"
        assert held(streamed._built[1]) == {f"layers.{i}"}  # one decoder layer's parameters, nothing else
        h = out
    assert torch.equal(streamed.head(h), whole.head(h))


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "q4_1"])
def test_streamed_parts_equal_the_built_models_parts(dtype):
    spec = resolve("toy-gqa")
    weights = spec.load_weights()
    tokens = torch.randint(0, weights.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    reference = Reference("toy-gqa", weights, dtype)
    for which in ("eager", "oracle"):
        assert_parts_equal(reference, which, tokens)


def test_w8a8_parts_are_the_resident_models():
    """A W8A8 judgement puts noise into the quantizers of the model it runs (transforms/w8a8.py): its parts are the
    resident models', not parts built apart."""
    weights = resolve("toy-gqa").load_weights()
    batches = [torch.zeros(1, 8, dtype=torch.int64)]
    reference = Reference("toy-gqa", weights, "w8a8_int8", calibration_batches=lambda: batches)
    assert reference.parts("eager").model is reference.eager.model
    assert reference.parts("oracle").model is reference.oracle.model


def test_part_names_cover_the_model_once():
    config = resolve("smollm2-135m").config
    parts = ["embed", *(f"layer_{i}" for i in range(config.n_layers)), "head"]
    names = [n for p in parts for n in part_names(config, p)]
    assert config.tie_embeddings and names.count("embed_tokens.weight") == 2  # the tied head reads the embedding
    assert set(names) == set(part_names(config, None)) and len(names) == len(part_names(config, None)) + 1


@pytest.mark.slow
def test_smollm2_weights_are_read_when_asked_and_streamed_parts_match():
    spec = resolve("smollm2-135m")
    weights = spec.load_weights()
    assert isinstance(weights.state_dict, LazyTensors)
    first, again = weights.state_dict["layers.0.mlp.up_proj.weight"], weights.state_dict["layers.0.mlp.up_proj.weight"]
    assert torch.equal(first, again) and first.data_ptr() != again.data_ptr()  # fresh each time: nothing kept
    reference = Reference("smollm2-135m", weights, "fp32")
    tokens = torch.tensor([spec.load_tokenizer().encode("The tower is 324 metres tall, about the same height")])
    assert_parts_equal(reference, "eager", tokens)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "q4_1"])
def test_a_streamed_model_computes_the_built_models_logits(dtype):
    spec = resolve("toy-gqa")
    weights = spec.load_weights()
    tokens = torch.randint(0, weights.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    resident, streamed = (Reference("toy-gqa", weights, dtype, memory=m) for m in ("resident", "streaming"))
    assert isinstance(streamed.eager, StreamingModel) and not isinstance(resident.eager, StreamingModel)
    for which in ("eager", "oracle", "fp32"):
        a, b = getattr(resident, which), getattr(streamed, which)
        assert a.name == b.name and torch.equal(b.logits(tokens, 5), a.logits(tokens, 5)), which
    assert torch.equal(streamed.fp32.sample(2, 6), resident.fp32.sample(2, 6))
    with pytest.raises(HarnessError, match="serving checks need the resident eager model"):
        streamed.eager.serving(None)


def test_auto_streams_a_reference_that_would_not_fit_the_machine(monkeypatch):
    weights = resolve("toy-gqa").load_weights()
    need = resident_bytes(weights.config)
    w8a8_refused = r"--dtype w8a8_int8: W8A8 calibration and judgement run whole models \(quantized and not"
    monkeypatch.setattr(eager, "machine_bytes", lambda: 5 * need)
    batches = [torch.zeros(1, 8, dtype=torch.int64)]
    fits = Reference("toy-gqa", weights, "w8a8_int8", calibration_batches=lambda: batches)
    assert fits.eager  # four whole models: twice the resident reference
    monkeypatch.setattr(eager, "machine_bytes", lambda: 3 * need)
    assert not Reference("toy-gqa", weights, "fp32").streaming
    with pytest.raises(HarnessError, match=w8a8_refused):
        Reference("toy-gqa", weights, "w8a8_int8").eager
    monkeypatch.setattr(eager, "machine_bytes", lambda: need)
    assert Reference("toy-gqa", weights, "fp32").streaming
    with pytest.raises(HarnessError, match=w8a8_refused):
        Reference("toy-gqa", weights, "w8a8_int8").eager
    with pytest.raises(HarnessError, match="--eager-memory 'lots': choose from auto, resident, streaming"):
        RunConfig("toy-gqa", "fp32", eager_memory="lots")


def test_a_streamed_configuration_checks_end_to_end_and_bisects_a_planted_fault(tmp_path):
    config = RunConfig("toy-gqa", "fp32", eager_memory="streaming")
    case = Case(config)
    assert case.run(end_to_end.check)["verdict"]["passed"]
    assert "--eager-memory streaming" in config.command()
    assert "serving checks need the resident eager model" in case.unsupported("decode")
    assert case.record("end_to_end")["eager_memory"] == {"asked": "streaming", "streaming": True}
    fault = weight_fault(1, "down_proj")
    rec = Case(config, fault=fault).run(bisect.bisect, artifacts=tmp_path)
    assert (rec["layer"], rec["sub_block"]) == ("layer_1", "down_proj"), bisect.format_bisect(rec)
