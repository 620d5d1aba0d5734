"""The paged KV cache, laid out as sharktank's `export_paged_llm_v1` lays it out, so that the harness's
serving programs and sharktank's are driven the same way:

- the cache is one flat tensor [n_pages, page_elems]; a page is [n_layers, 2 (K, V), kv_heads, stride,
  head_dim]: `stride` (block_seq_stride) consecutive positions of one sequence, every layer;
- a sequence owns the pages its page table (seq_block_ids) lists: position p lives in page
  table[p // stride], slot p % stride;
- page 0 is never handed out: it is where writes that belong nowhere go (padding), and what unused
  table columns point at.

`PagedKV` is one layer's view of it for one call: it writes the call's K/V at their positions and reads
back every position the page table covers, with the additive mask (causal, and nothing at or beyond the
sequence's length). Prefill, chunked prefill and decode are the same call with different shapes.

`DEFECTS` are the serving bugs the harness plants in a compiled program to prove its checks catch them
(transforms/faults.py): they live here because they are edits of exactly this arithmetic.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from harness.reference.llama.config import LlamaConfig

DEFECTS = {
    "write_offset": "decode writes K/V one position late",
    "page_index": "K/V written to the next page number",
    "mask_offset": "the mask lets each query see one position ahead (the next token, or padding)",
    "stale_read": "decode attends over the cache as it was before its own write",
}
DECODE_ONLY = ("write_offset", "stale_read")  # prefill stays right: iree-org/iree#18687's pattern


@dataclasses.dataclass(frozen=True)
class PagedLayout:
    n_layers: int
    kv_heads: int
    head_dim: int
    n_pages: int
    stride: int = 32

    @classmethod
    def of(cls, config: LlamaConfig, n_pages: int, stride: int = 32) -> "PagedLayout":
        return cls(config.n_layers, config.n_kv_heads, config.head_dim, n_pages, stride)

    @property
    def page_elems(self) -> int:
        return self.n_layers * 2 * self.kv_heads * self.stride * self.head_dim

    def allocate(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(self.n_pages, self.page_elems, dtype=dtype)

    def rows(self, pages: torch.Tensor, layer: int, kv: int, slots: torch.Tensor,
             heads: torch.Tensor | None = None) -> torch.Tensor:
        """Row indices into the cache viewed as [n_pages * n_layers * 2 * kv_heads * stride, head_dim]:
        `pages` and `slots` [batch, positions] -> [batch, kv_heads, positions]; `heads`: arange(kv_heads)."""
        heads = (torch.arange(self.kv_heads) if heads is None else heads)[None, :, None]
        block = ((pages[:, None, :] * self.n_layers + layer) * 2 + kv) * self.kv_heads + heads
        return block * self.stride + slots[:, None, :]

    def kv(self, cache: torch.Tensor, page_table: torch.Tensor, length: int) -> torch.Tensor:
        """The K/V of positions 0..length-1 of the sequence that owns `page_table` ([columns]) as
        [n_layers, 2, kv_heads, length, head_dim]."""
        positions = torch.arange(length)[None]
        pages, slots = page_table[None, positions // self.stride], positions % self.stride
        rows = cache.reshape(-1, self.head_dim)
        return torch.stack([torch.stack([rows[self.rows(pages, layer, kv, slots)[0]] for kv in (0, 1)])
                            for layer in range(self.n_layers)])


def _and(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(a, b, False)  # not `a & b`: IREE cannot legalize aten.__and__ on i1 tensors


@dataclasses.dataclass
class PagedKV:
    """Layer `layer`'s cache traffic for one call: `positions` [batch, seq] of the call's tokens,
    `seq_lens` [batch] (each sequence's length after the call), `page_table` [batch, columns]."""

    cache: torch.Tensor
    layout: PagedLayout
    layer: int
    positions: torch.Tensor
    seq_lens: torch.Tensor
    page_table: torch.Tensor
    defect: str | None = None
    # Where the index constants go: on a device of their own at TP > 1 (transforms/shard.py: iree-compile 3.9
    # fails on a constant that several devices use without a transfer).
    place: Callable[[torch.Tensor], torch.Tensor] = lambda t: t

    def _pages(self, positions: torch.Tensor) -> torch.Tensor:
        stride, columns = self.layout.stride, self.page_table.shape[1]
        column = torch.clamp(positions // stride, max=columns - 1)
        return self.page_table.gather(1, column)

    def __call__(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write `k`, `v` ([batch, kv_heads, seq, head_dim]) and return every position's K and V
        ([batch, kv_heads, columns * stride, head_dim]) and the additive mask [batch, 1, seq, columns *
        stride] in k's dtype."""
        layout, defect = self.layout, self.defect
        if defect in DECODE_ONLY and self.positions.shape[1] > 1:
            defect = None
        rows = self.cache.view(-1, layout.head_dim)
        before = rows.clone() if defect == "stale_read" else rows
        positions = self.positions + (defect == "write_offset")
        # Padding (at or beyond the sequence's length) goes to page 0, never into a page in use.
        pages = torch.where(positions < self.seq_lens[:, None], self._pages(positions), 0)
        pages = pages + (defect == "page_index")
        slots = positions % layout.stride
        heads = self.place(torch.arange(layout.kv_heads))
        for kv, value in ((0, k), (1, v)):
            index = layout.rows(pages, self.layer, kv, slots, heads).flatten()
            rows.index_put_((index,), value.flatten(0, 2).to(rows.dtype))
        keys = self.place(torch.arange(self.page_table.shape[1] * layout.stride))[None]
        read_pages, read_slots = self.page_table[:, keys[0] // layout.stride], keys % layout.stride
        k_all, v_all = (before[layout.rows(read_pages, self.layer, kv, read_slots, heads)].to(k.dtype)
                        for kv in (0, 1))
        limit = self.positions[:, :, None] + (defect == "mask_offset")
        valid = _and(keys[:, None, :] <= limit, keys[:, None, :] < self.seq_lens[:, None, None])
        mask = torch.where(valid, 0.0, float("-inf")).to(k.dtype)[:, None]
        return k_all, v_all, mask


@dataclasses.dataclass(frozen=True)
class ServingShape:
    """The static shapes of a serving program: prefill_bs{N} takes `prefill_len` tokens per sequence, both
    entry points a page table of `columns` pages (so sequences of up to columns * stride tokens), over a
    cache of `n_pages` pages, for each batch size N in `batches`."""

    prefill_len: int = 64
    columns: int = 4
    n_pages: int = 24
    stride: int = 32
    batches: tuple[int, ...] = (1, 4)

    @property
    def capacity(self) -> int:
        return self.columns * self.stride

    def layout(self, config: LlamaConfig) -> PagedLayout:
        return PagedLayout.of(config, self.n_pages, self.stride)


def cache_dtype(dtype: torch.dtype) -> torch.dtype:
    """The cache's element type at the program boundary: the model's, except bf16, held in fp32 (exactly),
    because IREE's Python runtime cannot map bf16 buffers to numpy and the checks read the cache."""
    return torch.float32 if dtype == torch.bfloat16 else dtype
