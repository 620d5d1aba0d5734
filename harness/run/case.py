"""One configuration (model x dtype x TP x target) as the checks see it: the reference, the candidate, the
inputs and the tolerance policy, each built on first use and shared by every check of the configuration,
and the record that each check's result becomes (configuration, candidate, stages, versions, machine)."""

from __future__ import annotations

import dataclasses
import time
from functools import cached_property
from typing import Callable

import torch

from harness.artifacts.sharktank import Artifact
from harness.candidates import Candidate, Forward
from harness.candidates.artifact import ArtifactCandidate
from harness.candidates.exported import ExportedCandidate
from harness.checks import SERVING_CHECKS, Inputs
from harness.checks.serving import QUICK, Plan
from harness.common.dtypes import quantization
from harness.common.errors import HarnessError
from harness.common.host import machine
from harness.data.dataset import BUNDLED_PATH
from harness.iree.compiler import compiler_record
from harness.numerics.tolerance import Policy, policy
from harness.reference.eager import Reference, resident_bytes
from harness.reference.families import family as family_name
from harness.reference.families import model_class
from harness.reference.registry import ModelSpec, resolve
from harness.reference.weights import LoadedWeights
from harness.reporting.records import versions
from harness.run.config import RunConfig
from harness.transforms import w8a8
from harness.transforms.faults import Fault
from harness.transforms.shard import UnfitTP, check_tp


class Case:
    """`config`, with `fault` planted in the candidate only (eager and the oracle stay clean)."""

    def __init__(self, config: RunConfig, fault: Fault | None = None):
        self.config, self.fault = config, fault

    @cached_property
    def artifact(self) -> Artifact | None:
        return Artifact(self.config.artifact) if self.config.artifact else None

    @cached_property
    def spec(self) -> ModelSpec:
        """The model: a registered or given one, or a sharktank export's (its IRPA's weights, and the tokenizer
        of --model, if named)."""
        model = resolve(self.config.model) if self.config.model else None
        if not self.artifact:
            return model
        if self.fault:
            raise HarnessError(f"--artifact {self.config.artifact}: faults are planted in the harness's own export")
        if self.config.dtype != self.artifact.dtype:
            raise HarnessError(f"--dtype {self.config.dtype}: the export at {self.config.artifact} is "
                               f"{self.artifact.dtype} (its kv_cache_dtype {self.artifact.export.kv_cache_dtype})")
        return ModelSpec(self.config.name, None, lambda: self.artifact.weights,
                         load_tokenizer=model.load_tokenizer if model else None)

    @cached_property
    def weights(self) -> LoadedWeights:
        weights, cfg = self.spec.load_weights(), self.config
        family, name = model_class(weights.config), family_name(weights.config)
        if family.DTYPES and cfg.dtype not in family.DTYPES:
            raise HarnessError(f"--dtype {cfg.dtype}: the {name} family runs {', '.join(family.DTYPES)} "
                               f"({cfg.name}; its other variants are not built)")
        if not family.shardable and cfg.tp > 1:
            raise UnfitTP(f"--tp {cfg.tp}: tensor parallelism is not built for the {name} family ({cfg.name})")
        if family.shardable:
            check_tp(weights.config, cfg.tp, cfg.name, quantization(cfg.dtype))
        if self.config.seq_len > weights.config.max_seq_len:
            raise HarnessError(f"--seq-len {self.config.seq_len}: {self.config.name} takes at most "
                               f"{weights.config.max_seq_len} tokens")
        return weights

    @cached_property
    def reference(self) -> Reference:
        spec, vocab = self.spec, self.weights.config.vocab_size
        return Reference(self.config.name, self.weights, self.config.dtype, self.config.target.attention_impl,
                         self.config.eager_mode, spec.load_tokenizer,
                         lambda: w8a8.calibration_batches(spec.load_tokenizer() if spec.real_text else None, vocab),
                         spec.load_transformers, self.config.eager_memory)

    @cached_property
    def candidate(self) -> Candidate:
        c = self.config
        if self.artifact:
            return ArtifactCandidate(self.artifact, c.target, self.weights.config, self.reference.variant.torch_dtype)
        return ExportedCandidate(self.reference.variant, c.target, c.tp, c.seq_len, self.fault, c.model, c.command())

    @cached_property
    def inputs(self) -> Inputs:
        return self.token_inputs(self.config.seq_len)

    def token_inputs(self, n: int) -> Inputs:
        """[1, n] ids: real WikiText from the start of the bundled file, or seeded random ids for toys."""
        if self.spec.real_text:
            ids = self.spec.load_tokenizer().encode(BUNDLED_PATH.read_text(encoding="utf-8")[: 8 * n])[:n]
            return Inputs(torch.tensor([ids], dtype=torch.int64), "wikitext-2 test, from the start")
        tokens = torch.randint(0, self.weights.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
        return Inputs(tokens, "random ids, seed 0")

    def prompt_inputs(self, prompts: int, length: int) -> Inputs:
        """[1, prompts * length] ids of `prompts` prompts: real WikiText, or for toys text sampled from the
        toy's fp32 eager model (on random ids a corrupted toy scores no worse than a right one)."""
        if self.spec.real_text:
            return self.token_inputs(prompts * length)
        tokens = self.reference.fp32.sample(prompts, length)
        return Inputs(tokens.reshape(1, -1), f"{prompts} prompts sampled from the fp32 eager model, seed 0")

    def serving_plan(self, plan: Plan) -> Plan:
        """`plan` at the candidate's serving shape: an export's block_seq_stride and batch sizes, and chunks that
        start on a page (sharktank's prefill writes whole pages: a chunk starting mid-page overwrites the page's
        earlier positions, tests/test_sharktank_artifact.py)."""
        if not self.artifact:
            return plan
        shape = self.artifact.shape(plan.shape)
        batch = max((b for b in shape.batches if b <= len(plan.lengths)), default=1)
        total, stride = sum(plan.chunks), shape.stride
        whole = min(len(plan.chunks) - 1, (total - 1) // stride)
        return dataclasses.replace(plan, shape=shape, lengths=plan.lengths[:batch],
                                   chunks=(stride,) * whole + (total - whole * stride,))

    def unsupported(self, check: str) -> str | None:
        """Why this configuration cannot take `check`, or None: the candidate's reason, or for an export, that
        its batch sizes or stride leave the check nothing to compare (the check is then a recorded skip)."""
        family = model_class(self.weights.config)
        if family.CHECKS is not None and check not in family.CHECKS:
            return f"{self.config.name} ({family_name(self.weights.config)} family): {family.WHY_NOT}"
        if check in SERVING_CHECKS and self.policy.noisy_reference:
            return (f"{self.config.dtype}'s activation quantizers flip codes between any two computations: it is "
                    "judged against a noisy eager, end to end and part by part (transforms/w8a8.py); a judgement "
                    "per serving call is not built")
        reason = self.candidate.unsupported(check)
        if not reason and check in SERVING_CHECKS and self.reference.streaming:
            reason = (f"the serving checks need the resident eager model, and {self.config.name}'s reference is "
                      f"streamed (--eager-memory {self.config.eager_memory}: "
                      f"{resident_bytes(self.weights.config) / 2**30:.1f} GiB resident)")
        if reason or not self.artifact:
            return reason
        plan = self.serving_plan(QUICK)
        if check == "batching" and len(plan.lengths) < 2:
            return (f"the export has no batch size from 2 to {len(QUICK.lengths)} with both prefill and decode "
                    f"(batches {list(plan.shape.batches)})")
        if check == "chunked_prefill" and len(plan.chunks) < 2:
            return f"the check's {sum(plan.chunks)} tokens fit one page of {plan.shape.stride}: no second chunk"
        return None

    @property
    def policy(self) -> Policy:
        return policy(self.config.dtype)

    def tp1(self) -> Forward | None:
        """For a TP > 1 configuration, the same candidate compiled unsharded: what sharding is judged against."""
        return self.candidate.forward(tp=1) if self.config.tp > 1 else None

    def run(self, check: Callable[..., dict], inputs=None, **kwargs) -> dict:
        """`check(candidate, reference, inputs, policy, **kwargs)` as this configuration's record; `inputs`
        default to the case's tokens (perplexity's are its windows)."""
        return self.record(**check(self.candidate, self.reference, inputs or self.inputs, self.policy, **kwargs))

    def record(self, kind: str, **fields) -> dict:
        cfg = self.config
        return {
            "kind": kind, "config": cfg.id, "model": cfg.name, "dtype": cfg.dtype, "tp": cfg.tp,
            "target": cfg.target.name, "device": cfg.target.device(cfg.tp), "eager_mode": cfg.eager_mode,
            "eager_memory": {"asked": cfg.eager_memory, "streaming": self.reference.streaming
                             if "reference" in self.__dict__ else None},
            "attention": cfg.target.attention_impl,
            "weights": ({"source": self.weights.source, "sha256": self.weights.sha256}
                        if "weights" in self.__dict__ else None),
            "stages": self.candidate.stages.to_record() if "candidate" in self.__dict__ else {},
            "artifact": self.artifact.describe() if self.__dict__.get("artifact") else None,
            "fault": self.fault.id if self.fault else None,
            "command": cfg.command(), "versions": versions(), "compiler": compiler_record(cfg.target.compiler),
            "machine": machine(), "time": time.time(), **fields,
        }
