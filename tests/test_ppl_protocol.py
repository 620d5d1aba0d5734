"""Windows against llama.cpp's and lm-eval's arithmetic written out by hand, the Protocol record, and the
evaluation text: the bundled file's identity, its forms, and the one-line errors."""

import dataclasses
import hashlib
import json
import shutil
import time
import types

import pytest

from harness.common.errors import HarnessError
from harness.data import dataset
from harness.data.dataset import Text, load_text
from harness.perplexity.protocol import Protocol, make_windows

BOS, EOS = 1, 2


class FakeTokenizer:
    """Duck-typed tokenizer whose "encoding" is a fixed token list."""

    def __init__(self, tokens, add_bos=False, bos_id=BOS, eos_id=EOS):
        self.tokens, self.add_bos, self.bos_id, self.eos_id = list(tokens), add_bos, bos_id, eos_id
        self.name, self.fingerprint = "fake", "ab" * 32

    def encode(self, text):
        return list(self.tokens)


TEXT = Text("synthetic", "cd" * 32, "raw", "some text")


def windows(tokens, **kwargs):
    tokenizer_kwargs = {k: kwargs.pop(k) for k in ("add_bos", "bos_id") if k in kwargs}
    return make_windows(TEXT, FakeTokenizer(tokens, **tokenizer_kwargs), **kwargs)


def as_lists(ws):
    return [(w.inputs.tolist(), w.first, w.targets.tolist()) for w in ws]


# llama.cpp -------------------------------------------------------------------------------------------

def test_llamacpp_windows_without_bos():
    tokens = list(range(100, 10_100))  # 10,000 tokens: 19 chunks of 512, the last 272 tokens dropped
    ws = windows(tokens)
    p = ws.protocol
    assert (p.total_windows, p.n_windows, p.n_tokens, p.bos) == (19, 19, 19 * 255, "none")
    got = as_lists(ws)
    assert len(got) == 19
    for i, (inputs, first, targets) in enumerate(got):
        assert inputs == tokens[512 * i:512 * (i + 1)]
        assert first == 256  # positions 256..510 scored, predicting tokens 257..511 of the chunk
        assert targets == tokens[512 * i + 257:512 * (i + 1)]


def test_llamacpp_windows_with_bos_prepend_once_and_overwrite_slot_0():
    tokens = list(range(100, 10_100))
    listed = [BOS] + tokens  # llama.cpp tokenizes with add_special: one BOS in front of the text
    ws = windows(tokens, add_bos=True)
    assert (ws.protocol.total_windows, ws.protocol.bos, ws.protocol.text_tokens) == (19, f"slot0=bos:{BOS}", 10_001)
    for i, (inputs, first, targets) in enumerate(as_lists(ws)):
        assert inputs == [BOS] + listed[512 * i + 1:512 * (i + 1)]
        assert targets == listed[512 * i + 257:512 * (i + 1)]
    # An encoding that already starts with BOS does not get a second one.
    assert windows([BOS] + tokens, add_bos=True).protocol.text_tokens == 10_001


def test_llamacpp_odd_context_and_first_k_windows():
    tokens = list(range(10, 40))  # 30 tokens, n_ctx 7: 4 chunks; first = 3, positions 3..5 scored
    got = as_lists(windows(tokens, n_ctx=7))
    assert got[1] == (tokens[7:14], 3, tokens[11:14])
    assert len(got) == 4
    ws = windows(list(range(10_000)), max_windows=3)
    assert (ws.protocol.n_windows, ws.protocol.total_windows, ws.protocol.n_tokens, len(ws)) == (3, 19, 765, 3)
    assert len(list(ws)) == 3
    assert windows(list(range(10_000)), max_windows=1000).protocol.n_windows == 19


def test_windows_are_lazy_and_can_be_iterated_again():
    ws = windows(list(range(10_000)))
    assert isinstance(iter(ws), types.GeneratorType)
    assert as_lists(ws) == as_lists(ws)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_ctx=512), "fewer than one window"),
    (dict(n_ctx=64, stride=32), "disjoint"),
    (dict(n_ctx=2), "at least 3"),
    (dict(max_windows=0), "at least 1"),
    (dict(scheme="sliding"), "unknown"),
])
def test_bad_protocol_options_are_one_line_errors(kwargs, message):
    with pytest.raises(HarnessError, match=message) as e:
        windows(list(range(500)), **kwargs)
    assert "\n" not in str(e.value)


# lm-eval rolling -------------------------------------------------------------------------------------

def test_rolling_disjoint_windows_score_every_token_once():
    tokens = list(range(100, 1100))  # 1,000 tokens, n_ctx 256: windows of 256, 256, 256, 232 new tokens
    ws = windows(tokens, scheme="rolling", n_ctx=256)
    assert (ws.protocol.total_windows, ws.protocol.n_tokens, ws.protocol.bos) == (4, 1000, f"prefix=bos:{BOS}")
    got = as_lists(ws)
    assert got[0] == ([BOS] + tokens[:255], 0, tokens[:256])
    assert got[1] == (tokens[255:511], 0, tokens[256:512])
    assert got[3] == (tokens[743:999], 256 - 232, tokens[768:])
    assert sum((t for *_, t in got), []) == tokens


def test_rolling_with_stride_keeps_context_and_uses_eos_without_bos():
    tokens = list(range(100, 1100))
    ws = windows(tokens, scheme="rolling", n_ctx=256, stride=100, bos_id=None)
    assert ws.protocol.bos == f"prefix=eos:{EOS}"
    assert ws.protocol.total_windows == 1 + 8  # 256 first, then ceil(744 / 100) windows of up to 100
    got = as_lists(ws)
    assert sum((t for *_, t in got), []) == tokens
    for inputs, first, targets in got[1:]:
        end = tokens.index(targets[-1]) + 1
        assert inputs == tokens[end - 257:end - 1]  # a full window of context before each target
        assert first == 256 - len(targets)
    assert windows(tokens, scheme="rolling", n_ctx=256, stride=100, max_windows=3).protocol.n_tokens == 456


# the record -----------------------------------------------------------------------------------------

def test_protocol_is_frozen_serializable_and_keyed():
    p = windows(list(range(10_000)), max_windows=4).protocol
    assert (p.dataset, p.dataset_sha256, p.text_form, p.text_sha256) == (
        "synthetic", "cd" * 32, "raw", hashlib.sha256(b"some text").hexdigest())
    assert (p.tokenizer, p.tokenizer_fingerprint, p.scheme, p.n_ctx, p.stride) == (
        "fake", "ab" * 32, "llamacpp", 512, 512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.n_ctx = 256
    assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.stream_key() == "synthetic-raw.llamacpp.c512"
    assert p.stream_mismatch(windows(list(range(10_000)), max_windows=9).protocol) == []
    assert p.stream_mismatch(windows(list(range(10_000)), n_ctx=256).protocol) == ["n_ctx: 512 vs 256",
                                                                                  "stride: 512 vs 256"]


# the text -------------------------------------------------------------------------------------------

def test_bundled_file_is_wikitext2_raw_test():
    data = dataset.BUNDLED_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
    assert (len(data), data.count(b"\n")) == (1_290_590, 4_358)
    assert (dataset.BUNDLED_PATH.parent / "README.md").read_text().count("Creative Commons Attribution-ShareAlike")


def test_bundled_text_in_both_forms():
    raw = load_text()
    assert raw.text.encode() == dataset.BUNDLED_PATH.read_bytes()
    assert raw.sha256 == raw.dataset_sha256 == dataset.BUNDLED_SHA256
    joined = load_text(form="joined")
    assert len(joined.text.encode()) == 1_296_370  # "\n\n".join of the Hugging Face rows (data README)
    assert joined.dataset_sha256 == dataset.BUNDLED_SHA256 != joined.sha256


def test_corrupted_bundled_file_is_a_one_line_error(tmp_path, monkeypatch):
    copy = tmp_path / "wiki.test.raw"
    shutil.copyfile(dataset.BUNDLED_PATH, copy)
    data = bytearray(copy.read_bytes())
    data[1000] ^= 1
    copy.write_bytes(data)
    monkeypatch.setattr(dataset, "BUNDLED_PATH", copy)
    with pytest.raises(HarnessError, match="sha256") as e:
        load_text()
    assert str(copy) in str(e.value) and "\n" not in str(e.value)


def test_local_file_forms(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\n \nb\n")
    assert load_text(str(path)).text == "a\n \nb\n"
    assert load_text(str(path), form="joined").text == "a\n" + "\n\n" + "" + "\n\n" + "b\n"
    assert load_text(str(path)).dataset_sha256 == hashlib.sha256(b"a\n \nb\n").hexdigest()


@pytest.mark.parametrize("source, form, message", [
    ("./no-such-file.txt", "raw", "cannot read"),
    (dataset.BUNDLED, "detokenized", "unknown"),
])
def test_bad_text_options_are_one_line_errors(source, form, message):
    with pytest.raises(HarnessError, match=message) as e:
        load_text(source, form)
    assert "\n" not in str(e.value)


def test_hugging_face_id_offline_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HarnessError, match="HF_DATASETS_OFFLINE") as e:
        load_text("wikitext:wikitext-2-raw-v1:test")
    assert time.monotonic() - start < 2 and "\n" not in str(e.value)


def test_hugging_face_id_unreachable_fails_fast_in_one_line(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    start = time.monotonic()
    with pytest.raises(HarnessError, match="unreachable") as e:
        load_text("wikitext:wikitext-2-raw-v1")
    assert time.monotonic() - start < 5 and "\n" not in str(e.value)
