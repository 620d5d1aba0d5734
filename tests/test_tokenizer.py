"""The tokenizer: built from GGUF metadata or a Hugging Face tokenizer.json, checked against published
facts about SmolLM2's tokenizer and on small hand-made tokenizers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import gguf
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from harness.common.errors import HarnessError
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights.packaged import shipped_smollm2_gguf

WIKITEXT_TEST = Path("/work/shared/data/wikitext-2-raw/wiki.test.raw")
SMOLLM2_WIKITEXT_TEST_TOKENS = 303_415  # published token count of wiki.test.raw under SmolLM2's tokenizer


@pytest.fixture(scope="module")
def smollm2() -> Tokenizer:
    return Tokenizer.from_gguf(shipped_smollm2_gguf())


@pytest.mark.slow
def test_smollm2_special_tokens(smollm2):
    # From the GGUF's metadata (tokenizer.ggml.*): SmolLM2 adds no BOS.
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos) == (1, 2, False)
    assert smollm2.decode([smollm2.bos_id, smollm2.eos_id]) == "<|im_start|><|im_end|>"
    assert smollm2.encode("<|im_end|>") == [2]  # a control token stays whole
    assert smollm2.name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_wikitext_token_count_and_speed(smollm2):
    text = WIKITEXT_TEST.read_text(encoding="utf-8")
    start = time.perf_counter()
    ids = smollm2.encode(text)
    seconds = time.perf_counter() - start
    print(f"\nwiki.test.raw ({len(text.encode()) / 1e6:.2f} MB): {len(ids)} tokens in {seconds:.2f} s")
    assert len(ids) == SMOLLM2_WIKITEXT_TEST_TOKENS
    assert seconds < 15  # about 1 s on 2 cores; a pure-Python BPE would take minutes
    assert smollm2.decode(ids) == text  # byte-level BPE loses nothing


@pytest.mark.slow
def test_from_hf_matches_from_gguf(smollm2, tmp_path):
    """The tokenizer.json + tokenizer_config.json that transformers writes for the same tokenizer."""
    from transformers import AutoTokenizer

    path = shipped_smollm2_gguf()
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp_path)
    hf = Tokenizer.from_hf(tmp_path)
    text = WIKITEXT_TEST.read_text(encoding="utf-8")[:20000]
    assert hf.encode(text) == smollm2.encode(text)
    assert (hf.bos_id, hf.eos_id, hf.add_bos) == (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos)
    # The same tokenizer, serialized twice over different routes, pins to the same fingerprint.
    assert hf.fingerprint == smollm2.fingerprint


def toy_tokenizer_dir(path: Path, *, bos_template: bool, config: dict | None = None) -> Path:
    """A word-level tokenizer.json that truncates to 2 tokens, optionally adding <s> in its
    post-processor, as some published tokenizer.json files do."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "big": 4, "world": 5}
    backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_template:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.enable_truncation(max_length=2)
    path.mkdir()
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, **(config or {})}))
    return path


def test_from_hf_toy_ignores_truncation_and_reads_bos(tmp_path):
    tok = Tokenizer.from_hf(toy_tokenizer_dir(tmp_path / "a", bos_template=True))
    assert tok.encode("hello big world") == [3, 4, 5]  # all three, no BOS, despite max_length=2
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)  # add_bos from the post-processor
    assert tok.decode([3, 5]) == "hello world"

    plain = Tokenizer.from_hf(toy_tokenizer_dir(tmp_path / "b", bos_template=False))
    assert plain.add_bos is False
    assert plain.fingerprint != tok.fingerprint

    explicit = Tokenizer.from_hf(toy_tokenizer_dir(tmp_path / "c", bos_template=True,
                                                   config={"add_bos_token": False}))
    assert explicit.add_bos is False  # the config's flag wins


def test_errors_are_one_line(tmp_path):
    for call in (lambda: Tokenizer.from_gguf(tmp_path / "missing.gguf"),
                 lambda: Tokenizer.from_hf(tmp_path)):
        with pytest.raises(HarnessError) as info:
            call()
        assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)

    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a gguf" * 10)
    no_vocab = tmp_path / "no_vocab.gguf"  # a valid GGUF without tokenizer metadata
    writer = gguf.GGUFWriter(no_vocab, "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path in (not_gguf, no_vocab):
        with pytest.raises(HarnessError, match="cannot build a tokenizer"):
            Tokenizer.from_gguf(path)
