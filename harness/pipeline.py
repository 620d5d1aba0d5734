"""One configuration (model x dtype x TP x target) from weights to verdict, stage by stage.

Stages are export -> compile -> run -> numerics. Each is timed and its outcome kept; a failure keeps
its one-line message and a reproducer, and the caller goes on with the other configurations.
Everything expensive (weights, exports, compiled modules, references) is built once per
configuration and shared by the suites that use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import time
from functools import cached_property

import torch

from harness import records, variants
from harness.cache import PROJECT_ROOT, digest
from harness.dtypes import quantization, torch_dtype
from harness.engines import EagerEngine, IreeEngine
from harness.faults import Fault
from harness.iree.compiler import compile_module
from harness.iree.export import export_program
from harness.iree.runtime import CompiledModule
from harness.iree.stages import StageFailure
from harness.iree.targets import FP8_DECODE, Target
from harness.model import w8a8
from harness.model.shard import check_tp, shard
from harness.models import ModelSpec, resolve
from harness.programs import forward_entries, layer_entries

# Sources whose text decides what an export contains: a change to any of them invalidates the cache.
EXPORT_SOURCES = ("harness/model/llama.py", "harness/model/config.py", "harness/model/precision.py",
                  "harness/model/shard.py", "harness/model/quant.py", "harness/model/w8a8.py", "harness/variants.py",
                  "harness/faults.py", "harness/programs.py", "harness/iree/export.py", "harness/pipeline.py")
SAMPLE_TEXT = PROJECT_ROOT / "harness/data/wikitext2/wiki.test.raw"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str
    dtype: str
    tp: int = 1
    seq_len: int = 128
    target: Target = Target()
    eager_mode: str = "emulated"

    @property
    def id(self) -> str:
        return f"{self.model}-{self.dtype}-tp{self.tp}"

    def command(self) -> str:
        """The command line that reruns this configuration on its own."""
        t = self.target
        return shlex.join(["python", "-m", "harness", "run", "--model", self.model, "--dtype", self.dtype,
                           "--tp", str(self.tp), "--seq-len", str(self.seq_len),
                           "--iree-hal-target-device", t.hal_target_device, "--iree-device", t.device(self.tp),
                           "--threads", str(torch.get_num_threads()),
                           *(["--attention", t.attention] if t.attention else [])])


@dataclasses.dataclass
class StageResult:
    status: str  # passed | failed | skipped
    seconds: float = 0.0
    cached: bool = False
    error: str = ""
    reproducer: str = ""


class Pipeline:
    def __init__(self, config: RunConfig, fault: Fault | None = None):
        self.config, self.fault = config, fault
        self.dtype, self.quant = torch_dtype(config.dtype), quantization(config.dtype)
        self.spec: ModelSpec = resolve(config.model)
        self.stages: dict[str, StageResult] = {}
        self._modules: dict[str, CompiledModule] = {}

    @cached_property
    def weights(self):
        weights = self.spec.load_weights()
        check_tp(weights.config, self.config.tp, self.config.model, self.quant)
        return weights

    @cached_property
    def tokens(self) -> torch.Tensor:
        """[1, seq_len] input ids: real WikiText for real models, seeded random ids for toys."""
        n, vocab = self.config.seq_len, self.weights.config.vocab_size
        if self.spec.real_text:
            ids = self.spec.load_tokenizer().encode(SAMPLE_TEXT.read_text(encoding="utf-8")[: 8 * n])[:n]
            return torch.tensor([ids], dtype=torch.int64)
        return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(0))

    @cached_property
    def eager(self) -> EagerEngine:
        return variants.eager_reference(self.weights, self.dtype, self.config.eager_mode, self.attention, self.quant,
                                        self.calibration)

    @cached_property
    def fp32_reference(self) -> EagerEngine:
        """Eager fp32 without quantization: what a lower precision or a quantization is measured against."""
        return EagerEngine(variants.build_model(self.weights, torch.float32, attention=self.attention), "eager-fp32")

    @cached_property
    def oracle(self) -> EagerEngine:
        return variants.oracle(self.weights, self.dtype, self.attention, self.quant, self.calibration)

    @cached_property
    def calibration(self) -> dict | None:
        """A W8A8 variant's activation statistics, from eager fp32 (harness/model/w8a8.py)."""
        if self.quant not in w8a8.SCHEMES:
            return None
        tokenizer = self.spec.load_tokenizer() if self.spec.real_text else None
        return w8a8.calibrate(self.fp32_reference.model,
                              w8a8.calibration_batches(tokenizer, self.weights.config.vocab_size))

    @property
    def attention(self) -> str:
        return self.config.target.attention_impl

    @contextlib.contextmanager
    def stage(self, name: str, label: str = "forward"):
        """Time a stage and record its outcome; a StageFailure is recorded and re-raised."""
        start = time.perf_counter()
        key = name if label == "forward" else f"{name}:{label}"
        result = self.stages[key] = StageResult("passed")
        try:
            yield result
        except StageFailure as e:
            result.status, result.error, result.reproducer = "failed", str(e), e.reproducer
            raise
        finally:
            result.seconds = result.seconds or time.perf_counter() - start

    def compiled(self, program: str = "forward", seq_len: int | None = None, tp: int | None = None,
                 first: int = 0) -> CompiledModule:
        """The compiled module of `program` for `seq_len` tokens on `tp` devices (default: the
        configuration's), returning the logits of positions `first`.. ("forward" only), exported and
        compiled on first use (or taken from the cache). Its stages are recorded as "export", "compile",
        "run" for the end-to-end program and "<stage>:<label>" for others, e.g. "compile:layers",
        "run:forward@512[256:]", "export:forward@tp1"."""
        seq_len, tp = seq_len or self.config.seq_len, tp or self.config.tp
        label = program + (f"@{seq_len}" if seq_len != self.config.seq_len else "") + (
            f"[{first}:]" if first else "") + (f"@tp{tp}" if tp != self.config.tp else "")
        if label not in self._modules:
            fp8_decode = FP8_DECODE[self.config.target.hal_target_device]
            model = variants.build_model(self.weights, self.dtype, attention=self.attention, quant=self.quant,
                                         fp8_decode=fp8_decode, calibration=self.calibration)
            if self.fault:
                self.fault.apply(model)
            if tp > 1:
                model = shard(model, tp, self.config.model)
            config = self.weights.config
            tokens = torch.zeros(1, seq_len, dtype=torch.int64)
            entries = (forward_entries(tokens, first) if program == "forward"
                       else layer_entries(tokens, config.n_layers, config.dim))
            code = [PROJECT_ROOT.joinpath(s).read_bytes() for s in EXPORT_SOURCES]
            op_fault = self.fault.id if self.fault and self.fault.kind == "op" else ""
            weight_fault = self.fault.id if self.fault and self.fault.kind == "weight" else ""
            program_key = digest(*code, str(config.to_dict()), self.config.dtype, str(tp), program,
                                 str(first), self.attention, fp8_decode, op_fault, str(records.versions()),
                                 *(str(tuple(a.shape)) for e in entries for a in e.args))
            params_key = digest(*code, self.weights.sha256, self.config.dtype, str(tp), weight_fault)
            with self.stage("export", label) as st:
                exported = export_program(model, entries, program_key, params_key, self.config.command())
                st.seconds, st.cached = exported.seconds, exported.cached
            flags = self.config.target.compile_flags(tp)
            with self.stage("compile", label) as st:
                vmfb, st.seconds, st.cached = compile_module(exported.mlir, flags)
            with self.stage("run", label):
                self._modules[label] = CompiledModule(vmfb, exported.irpa, self.config.target.device(tp), tp,
                                                      source=(exported.mlir, flags))
        return self._modules[label]

    def iree_engine(self, seq_len: int | None = None, tp: int | None = None, first: int = 0) -> IreeEngine:
        return IreeEngine(self.compiled("forward", seq_len, tp, first), first=first)

    def record(self, kind: str, **fields) -> dict:
        cfg = self.config
        return {
            "kind": kind, "config": cfg.id, "model": cfg.model, "dtype": cfg.dtype, "tp": cfg.tp,
            "target": cfg.target.name, "device": cfg.target.device(cfg.tp), "eager_mode": cfg.eager_mode,
            "attention": self.attention,
            "weights": ({"source": self.weights.source, "sha256": self.weights.sha256}
                        if "weights" in self.__dict__ else None),
            "stages": {k: dataclasses.asdict(v) for k, v in self.stages.items()},
            "fault": self.fault.id if self.fault else None,
            "command": cfg.command(), "versions": records.versions(), "machine": records.machine(), "time": time.time(),
            **fields,
        }
