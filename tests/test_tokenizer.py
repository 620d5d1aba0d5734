"""The tokenizer: built from GGUF metadata or a Hugging Face tokenizer.json, checked against published
facts about SmolLM2's tokenizer, against an independent byte-level BPE written here from the GGUF's own
vocabulary and merges (GPT-2's byte map and pre-tokenizer regex, digits split one by one as the GGUF's
"smollm" pre-tokenizer does), against ids read off the vocabulary by hand, and on small hand-made
tokenizers. Its speed is measured by bench/tokenizer.py, not asserted here."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import gguf
import pytest
import regex
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from harness.common.errors import HarnessError
from harness.data.dataset import BUNDLED_PATH
from harness.reference.tokenizer import Tokenizer
from harness.reference.weights.packaged import shipped_smollm2_gguf

SMOLLM2_WIKITEXT_TEST_TOKENS = 303_415  # published token count of wiki.test.raw under SmolLM2's tokenizer
PRE_TOKENIZER = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _byte_map() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


@cache
def independent_bpe():
    """encode(text) by plain byte-level BPE over the shipped GGUF's vocabulary and merges, and the vocabulary."""
    reader = gguf.GGUFReader(shipped_smollm2_gguf())
    strings = {name: [bytes(reader.fields[name].parts[i]).decode() for i in reader.fields[name].data]
               for name in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")}
    vocab = strings["tokenizer.ggml.tokens"]
    ids = {t: i for i, t in enumerate(vocab)}
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(strings["tokenizer.ggml.merges"])}
    byte_map = _byte_map()

    def word(w: str) -> list[int]:
        parts = [byte_map[b] for b in w.encode()]
        while len(parts) > 1:
            rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if rank == len(ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return [ids[p] for p in parts]

    return (lambda text: [i for w in PRE_TOKENIZER.findall(text) for i in word(w)]), vocab


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
def test_smollm2_wikitext_token_count(smollm2):
    text = BUNDLED_PATH.read_text(encoding="utf-8")
    ids = smollm2.encode(text)
    assert len(ids) == SMOLLM2_WIKITEXT_TEST_TOKENS
    assert smollm2.decode(ids) == text  # byte-level BPE loses nothing


def test_ids_read_off_the_vocabulary(smollm2):
    _, vocab = independent_bpe()
    ids = smollm2.encode("The capital of France is Paris.")
    assert [vocab[i] for i in ids] == ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", "."]
    assert ids == [504, 3575, 282, 4649, 314, 7042, 30]


@pytest.mark.slow
def test_from_gguf_and_from_hf_match_an_independent_bpe(smollm2, tmp_path):
    """Both routes (GGUF metadata; the tokenizer.json + tokenizer_config.json transformers writes for it)
    against the BPE written here, on WikiText's first 30,000 characters (digits, @-@ and newlines)."""
    from transformers import AutoTokenizer

    encode, _ = independent_bpe()
    path = shipped_smollm2_gguf()
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp_path)
    hf = Tokenizer.from_hf(tmp_path)
    text = BUNDLED_PATH.read_text(encoding="utf-8")[:30000]
    assert smollm2.encode(text) == encode(text)
    assert hf.encode(text) == encode(text)
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
