"""A sharktank export as `python -m amdsharktank.examples.export_paged_llm_v1` writes it: a config JSON, the
program (MLIR, or a vmfb compiled from it) and its IRPA parameters, all in one directory.

Opening one checks that the three agree before anything runs: the entry points and argument counts the config
implies are the MLIR's, the cache's page size is what the IRPA's model needs at the config's block_seq_stride,
every tensor the model implies is in the IRPA with its shape. An export over several devices is pipeline-parallel
(`--pipeline-parallelism-size`: consecutive layers on each device, one cache per device holding its layers'
part of every page); sharktank 3.9 cannot export tensor parallelism ("Tensor parallelism not yet supported"),
and a sharded IRPA is refused. The eager reference is made from the IRPA's own
tensors (GGUF names, `llama.rope.interleave_emb` saying whether attn_q/attn_k rows are in the interleaved
rotary layout), so what is judged is the compiled program, not the conversion that fed it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from functools import cached_property
from pathlib import Path

import torch

from harness.artifacts.irpa import GGUF_TYPES, read_irpa
from harness.common.errors import HarnessError
from harness.reference.llama.config import LlamaConfig
from harness.reference.llama.paged import PagedLayout, ServingShape
from harness.reference.weights import LoadedWeights, sha256_files
from harness.reference.weights.gguf import RawTensor, llama_config, llama_tensors

DTYPES = {"float32": "fp32", "float16": "fp16"}  # kv_cache_dtype -> the harness's dtype
MLIR_ELEMENT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_FUNC = re.compile(r"func\.func @((prefill|decode)_bs(\d+))\((.*?)\)\s*->", re.S)
_ARG = re.compile(r"!torch\.(?:vtensor|tensor)<\[([^\]]*)\],(\w+)>")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What sharktank's config JSON says of the program."""

    prefill_batch_sizes: tuple[int, ...]
    decode_batch_sizes: tuple[int, ...]
    has_prefill_position: bool
    stride: int
    kv_cache_dtype: str
    page_elems: tuple[int, ...]  # per device
    block_count: int
    kv_heads: int
    head_dim: int
    max_seq_len: int

    @classmethod
    def read(cls, path: Path) -> "ExportConfig":
        try:
            raw = json.loads(path.read_text())
            cache = raw["paged_kv_cache"]
            return cls(tuple(raw["prefill_batch_sizes"]), tuple(raw["decode_batch_sizes"]),
                       bool(raw.get("has_prefill_position", False)), cache["block_seq_stride"],
                       cache["kv_cache_dtype"], tuple(cache["paged_kv_block_size_elements_per_device"]),
                       raw["transformer_block_count"], cache["attention_head_count_kv"], raw["attn_head_dim"],
                       raw["max_seq_len"])
        except json.JSONDecodeError as e:
            raise HarnessError(f"{path}: not JSON: {e}") from e
        except (KeyError, TypeError) as e:
            raise HarnessError(f"{path}: not a sharktank export config (missing {e})") from e

    @property
    def devices(self) -> int:
        return len(self.page_elems)

    @property
    def layer_elems(self) -> int:
        """Elements of one layer's part of a page: K and V of every KV head at every slot."""
        return 2 * self.kv_heads * self.stride * self.head_dim

    @property
    def layer_groups(self) -> list[int]:
        """Layers on each device (a pipeline-parallel export splits each page by layer)."""
        return [n // self.layer_elems for n in self.page_elems]

    @property
    def batches(self) -> tuple[int, ...]:
        """Batch sizes with both entry points: what the serving checks can drive."""
        return tuple(sorted(set(self.prefill_batch_sizes) & set(self.decode_batch_sizes)))


class Artifact:
    """The sharktank export in `directory`: exactly one config *.json and *.irpa, and a *.mlir, a *.vmfb or
    both (the vmfb is run as given; the MLIR is compiled with the harness's flags where there is no vmfb)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise HarnessError(f"--artifact {directory}: not a directory")
        self.config_path = self._one("*.json")
        ranks = sorted(p.name for p in self.directory.glob("*.rank*.irpa"))
        if ranks:
            raise HarnessError(f"--artifact {directory}: a tensor-parallel export ({', '.join(ranks)}) is not read "
                               "(amdsharktank 3.9 cannot make one: 'Tensor parallelism not yet supported')")
        self.irpa = self._one("*.irpa")
        self.mlir, self.vmfb = self._one("*.mlir", required=False), self._one("*.vmfb", required=False)
        if not (self.mlir or self.vmfb):
            raise HarnessError(f"--artifact {directory}: no .mlir or .vmfb program")
        self.export = ExportConfig.read(self.config_path)
        if self.export.kv_cache_dtype not in DTYPES:
            raise HarnessError(f"{self.config_path}: kv_cache_dtype {self.export.kv_cache_dtype} is not read yet "
                               f"(read: {', '.join(DTYPES)}; IREE's Python runtime cannot map a bf16 cache)")

    def _one(self, pattern: str, required: bool = True) -> Path | None:
        found = sorted(self.directory.glob(pattern))
        if len(found) > 1:
            raise HarnessError(f"--artifact {self.directory}: {len(found)} {pattern} files "
                               f"({', '.join(p.name for p in found)}); keep one")
        if required and not found:
            raise HarnessError(f"--artifact {self.directory}: no {pattern} file")
        return found[0] if found else None

    @property
    def dtype(self) -> str:
        """The harness dtype of the program: its cache's (sharktank's config does not record the activations')."""
        return DTYPES[self.export.kv_cache_dtype]

    @cached_property
    def weights(self) -> LoadedWeights:
        """The eager reference's weights from the IRPA, after checking the config and the MLIR agree with them."""
        properties, tensors = read_irpa(self.irpa)
        if "llama.rope.freq_base" not in properties:  # sharktank's default (500000) is not GGUF's (10000)
            raise HarnessError(f"{self.irpa}: no llama.rope.freq_base property")
        config = llama_config(self.irpa, properties.get, tie_embeddings="output.weight" not in tensors,
                              vocab_size=len(tensors["token_embd.weight"]) if "token_embd.weight" in tensors else None)
        odd = sorted(f"{n} ({t.dtype})" for n, t in tensors.items() if t.dtype not in GGUF_TYPES)
        if odd:
            raise HarnessError(f"{self.irpa}: tensors not in a float type the reference reads: {', '.join(odd[:4])}")
        # sharktank's toy llama stores output_norm as [1, dim]: a leading unit dimension is not a different shape.
        flat = {n: t.reshape(-1) if t.dim() == 2 and t.shape[0] == 1 else t for n, t in tensors.items()}
        stored = {n: RawTensor(GGUF_TYPES[t.dtype], tuple(t.shape), t) for n, t in flat.items()}
        # sharktank's rule: rows are in the interleaved rotary layout if the properties say so, and by default
        # when they came from a GGUF file (its import writes "schema": "GGUF", not the interleave key).
        interleaved = properties.get("llama.rope.interleave_emb", properties.get("schema") == "GGUF")
        raw = llama_tensors(self.irpa, config, stored, interleaved_rope=bool(interleaved))
        self.check_program(config)
        return LoadedWeights(config=config, state_dict={n: t.data.float().contiguous() for n, t in raw.items()},
                             tensor_types={n: t.type for n, t in raw.items()}, source=str(self.irpa),
                             sha256=sha256_files([self.irpa]))

    def check_program(self, config: LlamaConfig) -> None:
        """The config JSON against the model in the IRPA and against the MLIR's entry points."""
        e = self.export
        layout = PagedLayout.of(config, 1, e.stride)
        for what, theirs, ours in (("transformer_block_count", e.block_count, config.n_layers),
                                   ("attention_head_count_kv", e.kv_heads, config.n_kv_heads),
                                   ("attn_head_dim", e.head_dim, config.head_dim)):
            if theirs != ours:
                raise HarnessError(f"{self.config_path}: {what} is {theirs}, the model in {self.irpa.name} "
                                   f"implies {ours}")
        if sum(e.page_elems) != layout.page_elems or any(n % e.layer_elems for n in e.page_elems):
            raise HarnessError(f"{self.config_path}: paged_kv_block_size_elements_per_device is {list(e.page_elems)}, "
                               f"the model in {self.irpa.name} implies {layout.page_elems} in all, "
                               f"{e.layer_elems} a layer")
        if self.mlir:
            self._check_mlir()

    def _check_mlir(self) -> None:
        found = {m[1]: (m[2], _ARG.findall(m[4])) for m in _FUNC.finditer(self.mlir.read_text())}
        e = self.export
        wanted = ([f"prefill_bs{n}" for n in e.prefill_batch_sizes] + [f"decode_bs{n}" for n in e.decode_batch_sizes])
        missing = [name for name in wanted if name not in found]
        if missing:
            raise HarnessError(f"{self.config_path}: lists {', '.join(missing)}, which {self.mlir.name} does not "
                               f"define (it has {', '.join(sorted(found)) or 'no prefill/decode entry points'})")
        element = MLIR_ELEMENT[e.kv_cache_dtype]
        implied = [f"[?, {n}] {element}" for n in e.page_elems]
        for name in wanted:
            kind, args = found[name]
            count = (4 if kind == "decode" or e.has_prefill_position else 3) + e.devices
            if len(args) != count:
                raise HarnessError(f"{self.mlir.name}: {name} takes {len(args)} tensors, the config "
                                   f"(has_prefill_position {e.has_prefill_position}, {e.devices} device caches) "
                                   f"implies {count}")
            caches = [f"[{dims.replace(',', ', ')}] {elem}" for dims, elem in args[-e.devices:]]
            if caches != implied:
                raise HarnessError(f"{self.mlir.name}: {name}'s caches are {', '.join(caches)}, the config implies "
                                   f"{', '.join(implied)}")

    def shape(self, shape: ServingShape) -> ServingShape:
        """`shape` (the harness's, stride 32) at this program's stride and batch sizes, with the same capacity
        in tokens per sequence (at most what the export allows: ceil(max_seq_len / stride) - 1 pages) and in the
        cache."""
        stride, most = self.export.stride, -(-self.export.max_seq_len // self.export.stride) - 1
        return dataclasses.replace(shape, stride=stride, columns=min(-(-shape.capacity // stride), most),
                                   n_pages=-(-shape.n_pages * shape.stride // stride), batches=self.export.batches)

    def unsupported(self, check: str) -> str | None:
        """Why `check` cannot run on this program, or None."""
        e = self.export
        if check in ("layers", "bisect_decode"):
            return "a sharktank export has no per-layer program (bisect with the harness's own export: --model)"
        if check == "chunked_prefill" and not e.has_prefill_position:
            return "the export has no prefill start position (export with --has-prefill-position)"
        if check in ("batching", "decode", "cache_state", "chunked_prefill", "greedy", "decode_perplexity") \
                and 1 not in e.batches:
            return f"the export has no batch size 1 with both prefill and decode (batches {list(e.batches)})"
        return None

    def describe(self) -> dict:
        return {"artifact": str(self.directory), "config": self.config_path.name,
                "program": (self.vmfb or self.mlir).name, "irpa": self.irpa.name,
                "layers_per_device": self.export.layer_groups}
