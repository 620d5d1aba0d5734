"""Perplexity protocols: the windows an engine is fed, the positions scored in each, and the `Protocol`
record that goes with every result. Users' first complaint about perplexity tools is numbers that do not
agree (BOS or not, stride, text form, first-window handling); a perplexity without its protocol is not
a result.

Two window schemes, both over the whole text tokenized once:

- "llamacpp" (default), as llama.cpp's `llama-perplexity`: when the tokenizer adds a BOS, one BOS is
  prepended to the token list; the list is cut into chunks of n_ctx tokens (the last partial chunk is
  dropped); when the tokenizer adds a BOS it also overwrites slot 0 of every chunk; positions
  n_ctx/2 .. n_ctx-2 are scored, each predicting the next token: n_ctx - 1 - n_ctx/2 tokens per chunk.
- "rolling", as lm-evaluation-harness's `loglikelihood_rolling` (`get_rolling_token_windows` +
  `make_disjoint_window`): every token is scored exactly once; the first window is the prefix token
  (BOS if the tokenizer has one, else EOS) followed by the first n_ctx - 1 tokens; each later window scores
  the next `stride` tokens (default n_ctx: disjoint windows, lm-eval's context_len=1) with the tokens
  before them as context. The text is treated as one document; lm-eval's own `wikitext` task instead
  scores each article separately and normalises by words.

Windows are produced lazily; only the token list is held.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Callable, Iterator
from typing import Protocol as TypingProtocol

import torch

from harness.common.errors import HarnessError
from harness.data.dataset import Text

SCHEMES = ("llamacpp", "rolling")
DEFAULT_N_CTX = 512
# The subset a CI run scores: 32 of WikiText-2's 592 windows for SmolLM2 (8,160 scored tokens). Measured
# there (first 24 windows), a dtype's whole activation rounding (emulated low precision vs fp32 compute,
# same rounded weights) spreads the per-window mean dNLL by 3.7e-3 (bf16) and 5.4e-4 (fp16), sd. A compiled
# engine differs from eager by about one such rounding: even at 1.4x those, 32 windows give the paired
# gate >= 97 % power to catch twice the dtype's budget (gate.py: bf16 4e-3, fp16 1e-3).
DEFAULT_WINDOWS = 32


class Tokenizer(TypingProtocol):
    name: str
    fingerprint: str
    bos_id: int | None
    eos_id: int | None
    add_bos: bool

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""


@dataclasses.dataclass(frozen=True)
class Window:
    inputs: torch.Tensor  # [seq] int64: one prefill
    first: int  # the logits at positions first .. first + len(targets) - 1 are scored
    targets: torch.Tensor  # [n] int64: the token each scored position predicts


@dataclasses.dataclass(frozen=True)
class Protocol:
    dataset: str
    dataset_sha256: str
    text_form: str
    text_sha256: str
    tokenizer: str
    tokenizer_fingerprint: str
    scheme: str
    bos: str  # "slot0=bos:<id>" or "none" (llamacpp); "prefix=bos:<id>" or "prefix=eos:<id>" (rolling)
    n_ctx: int
    stride: int
    scored: str
    text_tokens: int
    total_windows: int
    n_windows: int
    n_tokens: int  # scored tokens in the n_windows windows

    # Everything but how many windows were taken. Runs that agree on these scored prefixes of one window
    # sequence (the first n_windows of the same windows), so their numbers can be compared.
    STREAM_FIELDS = ("dataset_sha256", "text_form", "text_sha256", "tokenizer_fingerprint", "scheme", "bos",
                     "n_ctx", "stride", "text_tokens")

    def stream_mismatch(self, other: "Protocol") -> list[str]:
        """The fields, with both values, on which the two protocols' window sequences differ."""
        return [f"{f}: {getattr(self, f)!r} vs {getattr(other, f)!r}"
                for f in self.STREAM_FIELDS if getattr(self, f) != getattr(other, f)]

    def stream_key(self) -> str:
        """A file-name-safe name of the window sequence, for golden files: data, form, scheme, n_ctx, stride."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.dataset.rstrip("/").rsplit("/", 1)[-1])
        stride = "" if self.stride == self.n_ctx else f".s{self.stride}"
        return f"{name}-{self.text_form}.{self.scheme}.c{self.n_ctx}{stride}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Protocol":
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Windows:
    """The windows of a protocol: iterable (lazily, again on each iteration), sized."""

    protocol: Protocol
    _make: Callable[[], Iterator[Window]]
    first: int  # no window scores a position before this one: engines may skip the logits before it

    def __iter__(self) -> Iterator[Window]:
        return self._make()

    def __len__(self) -> int:
        return self.protocol.n_windows


def check_max_windows(max_windows: int | None) -> None:
    if max_windows is not None and max_windows < 1:
        raise HarnessError(f"--windows / --ppl-windows {max_windows}: must be at least 1")


def make_windows(text: Text, tokenizer: Tokenizer, scheme: str = "llamacpp", n_ctx: int = DEFAULT_N_CTX,
                 stride: int | None = None, max_windows: int | None = None) -> Windows:
    """Tokenize `text` once and describe the first `max_windows` windows (all when None)."""
    if scheme not in SCHEMES:
        raise HarnessError(f"perplexity scheme {scheme!r} is unknown; known: {', '.join(SCHEMES)}")
    check_max_windows(max_windows)
    stride = n_ctx if stride is None else stride
    limit = math.inf if max_windows is None else max_windows
    tokens = tokenizer.encode(text.text)

    if scheme == "llamacpp":
        if n_ctx < 3:
            raise HarnessError(f"--ppl-n-ctx {n_ctx}: llama.cpp's protocol needs at least 3 to score a token")
        if stride != n_ctx:
            raise HarnessError(f"--stride {stride}: llama.cpp's protocol uses disjoint chunks (stride = n_ctx)")
        bos_id = tokenizer.bos_id if tokenizer.add_bos else None
        if bos_id is not None and tokens[:1] != [bos_id]:
            tokens = [bos_id] + tokens
        per_window = n_ctx - 1 - n_ctx // 2
        total = len(tokens) // n_ctx
        n_windows = min(limit, total)
        n_tokens = n_windows * per_window
        bos = "none" if bos_id is None else f"slot0=bos:{bos_id}"
        scored = f"positions {n_ctx // 2}..{n_ctx - 2} of each window ({per_window} tokens)"
        make = functools.partial(llamacpp_windows, torch.tensor(tokens, dtype=torch.int64), n_ctx, bos_id,
                                 n_windows)
        first = n_ctx // 2
    else:
        if not 1 <= stride <= n_ctx:
            raise HarnessError(f"--stride {stride}: must be in 1..n_ctx ({n_ctx})")
        prefix, prefix_id = ("bos", tokenizer.bos_id) if tokenizer.bos_id is not None else ("eos", tokenizer.eos_id)
        if prefix_id is None:
            raise HarnessError(f"tokenizer {tokenizer.name}: the rolling protocol needs a BOS or EOS token")
        first_len = min(n_ctx, len(tokens))
        total = 1 + math.ceil((len(tokens) - first_len) / stride) if tokens else 0
        n_windows = min(limit, total)
        n_tokens = min(len(tokens), first_len + (n_windows - 1) * stride)
        bos = f"prefix={prefix}:{prefix_id}"
        scored = f"every token once, {stride} new tokens per window after the first"
        make = functools.partial(rolling_windows, tokens, n_ctx, stride, prefix_id, n_windows)
        first = 0

    if total == 0:
        raise HarnessError(f"{text.dataset}: {len(tokens)} tokens, fewer than one window of {n_ctx}")
    protocol = Protocol(
        dataset=text.dataset, dataset_sha256=text.dataset_sha256, text_form=text.form, text_sha256=text.sha256,
        tokenizer=tokenizer.name, tokenizer_fingerprint=tokenizer.fingerprint, scheme=scheme, bos=bos,
        n_ctx=n_ctx, stride=stride, scored=scored, text_tokens=len(tokens), total_windows=total,
        n_windows=n_windows, n_tokens=n_tokens)
    return Windows(protocol, make, first)


def llamacpp_windows(tokens: torch.Tensor, n_ctx: int, bos_id: int | None, n_windows: int) -> Iterator[Window]:
    first = n_ctx // 2
    for i in range(n_windows):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        inputs = chunk.clone()
        if bos_id is not None:
            inputs[0] = bos_id
        yield Window(inputs, first, chunk[first + 1:])


def rolling_windows(tokens: list[int], n_ctx: int, stride: int, prefix_id: int, n_windows: int) -> Iterator[Window]:
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pairs = get_rolling_token_windows(tokens, prefix_id, max_seq_len=n_ctx, context_len=n_ctx - stride + 1)
    for _, pair in zip(range(n_windows), pairs):
        context, continuation = make_disjoint_window(pair)
        # As lm-eval's HFLM._loglikelihood_tokens builds the model input from the pair.
        inputs = (context + continuation)[-(n_ctx + 1):][:-1]
        yield Window(torch.tensor(inputs, dtype=torch.int64), len(inputs) - len(continuation),
                     torch.tensor(continuation, dtype=torch.int64))
