"""The T5 v1.1 encoder family: its eager reference equals Hugging Face transformers' T5EncoderModel on the same tiny
random weights (within the fp32 policy; the position buckets exactly), also read from saved Hugging Face directories;
faults planted in the compiled encoder are bisected to their layer and sub-block; the family's refusals are one line;
the fixed-tolerance verdict the report shows is torch.allclose's; and IREE's lowering of GELU's tanh approximation,
which the family writes out instead, is wrong (strict xfail)."""

import iree.runtime as rt
import iree.turbine.aot as aot
import pytest
import torch
import torch.nn.functional as F
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from harness.checks import bisect
from harness.common.errors import HarnessError
from harness.iree.compiler import compile_module
from harness.iree.targets import Target
from harness.numerics import metrics
from harness.numerics.tolerance import policy
from harness.reference.eager import Reference
from harness.reference.registry import resolve
from harness.reference.t5 import checkpoint
from harness.reference.t5.config import TOY_T5
from harness.reference.t5.model import SUB_BLOCK_CONSUMERS, SUB_BLOCKS, relative_buckets
from harness.reference.weights.hf_dir import load_hf_dir
from harness.run.case import Case
from harness.run.config import RunConfig
from harness.transforms.faults import row_fault, weight_fault
from harness.transforms.shard import UnfitTP


def hf_config(c=TOY_T5) -> HFT5Config:
    return HFT5Config(vocab_size=c.vocab_size, d_model=c.dim, d_kv=c.head_dim, d_ff=c.ffn_dim, num_layers=c.n_layers,
                      num_heads=c.n_heads, relative_attention_num_buckets=c.num_buckets,
                      relative_attention_max_distance=c.max_distance, layer_norm_epsilon=c.norm_eps,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)


def transformers_t5(weights, cls=T5EncoderModel):
    """transformers' model holding `weights` (each of its tensors named through checkpoint.parameter_name)."""
    model = cls(hf_config(weights.config)).eval()
    state = {k: weights.state_dict[checkpoint.parameter_name(k)] for k in model.state_dict()
             if checkpoint.parameter_name(k) is not None}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(m.startswith(("decoder.", "lm_head.")) for m in missing), (missing, unexpected)
    return model


@pytest.fixture(scope="module")
def weights():
    return resolve("toy-t5").load_weights()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, TOY_T5.vocab_size, (2, 150), generator=torch.Generator().manual_seed(0))


def test_eager_equals_transformers_t5_encoder_within_the_fp32_policy(weights, tokens):
    """150 tokens: offsets past max_distance (128) reach the last bucket."""
    reference = Reference("toy-t5", weights, "fp32")
    with torch.no_grad():
        theirs = transformers_t5(weights)(tokens).last_hidden_state
    ours = reference.eager.logits(tokens)
    verdict = policy("fp32").judge(theirs, ours, reference.oracle.logits(tokens))
    assert verdict.passed, verdict.reason
    # The relative position bias matters: without it (zero table) the output moves far outside the policy.
    flat = Reference("toy-t5", type(weights)(**{**vars(weights), "state_dict": {
        **weights.state_dict, "relative_attention_bias.weight": torch.zeros(TOY_T5.num_buckets, TOY_T5.n_heads)}}),
        "fp32")
    assert not policy("fp32").judge(flat.eager.logits(tokens), ours, reference.oracle.logits(tokens)).passed


def test_position_buckets_equal_transformers():
    for seq in (1, 7, 150, 300):
        positions = torch.arange(seq)
        theirs = T5Attention._relative_position_bucket(positions[None, :] - positions[:, None], bidirectional=True,
                                                        num_buckets=32, max_distance=128)
        assert torch.equal(relative_buckets(seq, 32, 128), theirs), seq


@pytest.mark.parametrize("cls", [T5EncoderModel, T5ForConditionalGeneration])
def test_a_hugging_face_directory_loads_bit_for_bit(weights, tokens, cls, tmp_path):
    """T5EncoderModel as Flux stores its text encoder, and a whole T5 (the decoder left unread)."""
    transformers_t5(weights, cls).save_pretrained(tmp_path)
    loaded = load_hf_dir(tmp_path)
    assert loaded.config == TOY_T5
    assert set(loaded.state_dict) == set(weights.state_dict)
    for name in weights.state_dict:
        assert torch.equal(loaded.state_dict[name], weights.state_dict[name]), name
    torch.testing.assert_close(Reference("t5", loaded, "fp32").eager.logits(tokens),
                               Reference("t5", weights, "fp32").eager.logits(tokens), rtol=0, atol=0)


def test_the_original_t5_and_foreign_tensors_are_refused_in_one_line(weights, tmp_path):
    model = transformers_t5(weights)
    model.config.feed_forward_proj = "relu"
    model.save_pretrained(tmp_path / "relu")
    with pytest.raises(HarnessError, match=r"config.json: feed_forward_proj is 'relu'.*v1.1") as e:
        load_hf_dir(tmp_path / "relu")
    assert "\n" not in str(e.value)
    assert checkpoint.parameter_name("encoder.block.0.layer.2.EncDecAttention.q.weight").startswith("encoder.")


def test_sub_blocks_are_what_a_layer_taps_and_flow_within_it(weights, tokens):
    model = Reference("toy-t5", weights, "fp32").eager.model
    taps = {}
    with torch.no_grad():
        model.layers[0](model.embed(tokens), *model.layer_args(tokens.shape[1]), taps)
    assert tuple(taps) == SUB_BLOCKS == tuple(SUB_BLOCK_CONSUMERS)
    assert all(set(c) <= set(SUB_BLOCKS) for c in SUB_BLOCK_CONSUMERS.values())


@pytest.mark.parametrize("fault, sub_block", [(row_fault(1, "down_proj", 5, 1.125), "down_proj"),
                                              (weight_fault(0, "q_proj"), "q_proj"),
                                              (weight_fault(1, "attn_norm"), "attn_norm")])
def test_bisection_pins_a_fault_on_its_layer_and_sub_block(fault, sub_block, tmp_path):
    rec = Case(RunConfig("toy-t5", "fp32"), fault=fault).run(bisect.bisect, artifacts=tmp_path)
    assert (rec["layer"], rec["sub_block"]) == (f"layer_{fault.layer}", sub_block), bisect.format_bisect(rec)


def test_what_the_family_cannot_take_is_refused_in_one_line():
    with pytest.raises(UnfitTP, match="--tp 2: tensor parallelism is not built for the t5 family"):
        Case(RunConfig("toy-t5", "fp32", tp=2)).weights
    with pytest.raises(HarnessError, match="--dtype q4_1: the t5 family runs fp32, fp16, bf16"):
        Case(RunConfig("toy-t5", "q4_1")).weights
    case = Case(RunConfig("toy-t5", "fp32"))
    for check in ("perplexity", "decode", "greedy"):
        assert "hidden states, not next-token logits" in case.unsupported(check)
    assert case.unsupported("layers") is None


def test_the_fixed_tolerance_verdict_is_allcloses():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(4096, generator=gen)
    for noise in (1e-5, 1e-4, 1e-3):
        x = ref + noise * torch.randn(4096, generator=gen)
        v = metrics.allclose(x, ref, 1e-4, 1.5e-3)
        assert v["passed"] == torch.allclose(x.double(), ref.double(), rtol=1.5e-3, atol=1e-4), noise
        assert v["over"] == float((~torch.isclose(x.double(), ref.double(), rtol=1.5e-3, atol=1e-4)).double().mean())
    assert not metrics.allclose(ref.clone().fill_(float("nan")), ref, 1e-4, 1.5e-3)["passed"]


class TanhGelu(torch.nn.Module):
    def forward(self, x):
        return F.gelu(x, approximate="tanh")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="IREE 3.9 (torch-mlir) lowers "
                   "aten.gelu(approximate='tanh') with 0.797724 for sqrt(2/pi) = 0.7978846: 5e-5 off at x = 1.35, "
                   "~120x torch's fp32 error; the T5 reference writes the formula out, as transformers' gelu_new does "
                   "(README, Findings)")
def test_iree_computes_gelus_tanh_approximation_as_accurately_as_torch(tmp_path):
    x = torch.linspace(-6, 6, 4097)
    path = tmp_path / "gelu.mlir"
    aot.export(TanhGelu(), args=(x,)).save_mlir(str(path))
    vmfb, _, _ = compile_module(path, Target().compile_flags(1))
    got = torch.from_numpy(rt.load_vm_flatbuffer_file(str(vmfb), driver="local-task").main(x.numpy()).to_host())
    exact = F.gelu(x.double(), approximate="tanh")
    torch_error = float((F.gelu(x, approximate="tanh").double() - exact).abs().max())
    assert float((got.double() - exact).abs().max()) <= 8 * torch_error

