"""The serving checks: the candidate's prefill_bs{N} / decode_bs{N} programs over the paged KV cache
(reference/llama/paged.py) driven as a server drives them, each call judged by the tolerance policy against
eager's same call, both against the fp64 oracle's:

- decode: prefill P tokens, then decode the next D one by one, teacher-forced; each step against eager's
  step, and against the candidate's own prefill logits at that position (self-consistency: a cache bug
  shows with no eager at all). The record holds the error profile over the steps;
- cache_state: after prefill and after the decode steps, the K/V in the pages in use against eager's, layer
  by layer; the pages no sequence owns (poisoned with NaN) bit for bit untouched;
- batching: four ragged sequences padded to one batch (padding tokens random, unused pages NaN, page tables
  interleaved), prefill then decode; each sequence against its batch-1 run and against eager;
- chunked_prefill: a prefill in three chunks with start positions against one prefill;
- greedy: compiled and eager generate, teacher-forced on eager's choice: the first step where their
  choices split and eager's logit margin there; a split at a near-tie (the step's logits within the
  policy) is reported, not failed;
- decode_perplexity: sharktank's perplexity_iree protocol (no BOS; prefill a prefix, then teacher-forced
  decode one token at a time; each prompt's perplexity, averaged over prompts) on a few prompts, the
  candidate's decode mode paired with its own prefill mode of the same tokens and with eager's decode mode
  (perplexity/gate.py's paired gates on the mean dNLL and the mean KLD, the dtype's budget);
- bisect_decode: a failing decode localised to its step, layer and sub-block, with a reproducer.

Every engine starts from the same cache: page 0 zeroed (sharktank's padding writes land there, and an
uninitialised page 0 was nod-ai/shark-ai#665), pages handed out zeroed, all others NaN.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from harness.candidates import Candidate, Serving
from harness.checks import SERVING_CHECKS as CHECKS  # noqa: F401 - the suite's list
from harness.checks import Inputs
from harness.checks.bisect import first_propagating_failure
from harness.checks.layers import Part
from harness.numerics import metrics
from harness.numerics.tolerance import Policy, Verdict
from harness.perplexity import gate
from harness.perplexity.stats import Accumulator, Stats
from harness.reference.eager import Reference
from harness.reference.families import sub_block_consumers
from harness.reference.llama.paged import PagedLayout, ServingShape


BATCH_OFFSET = 7  # batched sequence b starts at input token 7 b: overlapping text, different positions


@dataclasses.dataclass(frozen=True)
class Plan:
    """How much each check runs: `prefill` tokens then `steps` decode steps (decode, cache_state),
    `lengths` of the batched sequences and their decode `batch_steps`, the `chunks` of a chunked prefill,
    `generate` greedy tokens after a `prefill`-token prompt, `prompts` of `prompt_len` tokens for the
    decode-mode perplexity, each prefilled `prompt_prefix` tokens then decoded."""

    shape: ServingShape = ServingShape()
    prefill: int = 24  # not a multiple of the stride: decode crosses into a new page
    steps: int = 16
    lengths: tuple[int, ...] = (40, 17, 64, 29)
    batch_steps: int = 4
    chunks: tuple[int, ...] = (13, 16, 11)
    generate: int = 32
    prompts: int = 10  # enough for the paired gates' power in bf16 (gate.py says "underpowered" otherwise)
    prompt_len: int = 24
    prompt_prefix: int = 8

    @property
    def tokens(self) -> int:
        """How many input tokens the checks read (decode_perplexity reads its prompts: Case.prompt_inputs)."""
        return max(self.prefill + self.steps, self.prefill + self.generate, sum(self.chunks),
                   *(BATCH_OFFSET * b + n + self.batch_steps for b, n in enumerate(self.lengths)))


QUICK, NIGHTLY = Plan(), Plan(ServingShape(prefill_len=128, columns=8, n_pages=48), steps=96, generate=96,
                              lengths=(128, 33, 100, 64), batch_steps=16, chunks=(40, 57, 31), prompts=16,
                              prompt_len=128, prompt_prefix=16)


def allocate(layout: PagedLayout, lengths: list[int], columns: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Page tables [len(lengths), columns] for sequences of these final lengths, with pages dealt from a
    shuffled list (never page 0; unused columns 0), and the starting cache: page 0 and the pages handed out
    zeroed, every other page NaN."""
    needed = [-(-n // layout.stride) for n in lengths]
    pages = (torch.randperm(layout.n_pages - 1, generator=torch.Generator().manual_seed(seed)) + 1).tolist()
    if sum(needed) > len(pages) or max(needed) > columns:
        raise ValueError(f"sequences of {lengths} tokens do not fit {layout.n_pages} pages of {columns} columns")
    table = torch.zeros(len(lengths), columns, dtype=torch.int64)
    for b, n in enumerate(needed):
        table[b, :n] = torch.tensor(pages[:n])
        del pages[:n]
    cache = torch.full((layout.n_pages, layout.page_elems), float("nan"))
    cache[0] = 0
    cache[table[table > 0]] = 0
    return table, cache


def unused_pages(layout: PagedLayout, table: torch.Tensor) -> torch.Tensor:
    used = set(table.flatten().tolist()) | {0}
    return torch.tensor([p for p in range(layout.n_pages) if p not in used], dtype=torch.int64)


def pad(tokens: torch.Tensor, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """[batch, n] -> [batch, length], padded with random ids (padding that leaks in changes the result)."""
    padding = torch.randint(0, vocab, (tokens.shape[0], length - tokens.shape[1]),
                            generator=torch.Generator().manual_seed(seed))
    return torch.cat([tokens, padding], dim=1)


class Engines:
    """The candidate's serving program, eager's and the oracle's, driven with the same calls from the same
    starting cache."""

    def __init__(self, candidate: Candidate, reference: Reference, shape: ServingShape, cache: torch.Tensor):
        self.compiled: Serving = candidate.serving(shape)
        self.eager, self.oracle = reference.eager.serving(shape), reference.oracle.serving(shape)
        self.all = (self.compiled, self.eager, self.oracle)
        for engine in self.all:
            engine.write_cache(cache)
        self.vocab = reference.weights.config.vocab_size

    def prefill(self, tokens, starts, lens, table, shape: ServingShape) -> list[torch.Tensor]:
        tokens = pad(tokens, shape.prefill_len, vocab=self.vocab)
        return [e.prefill(tokens, starts, lens, table) for e in self.all]

    def decode(self, tokens, lens, starts, table) -> list[torch.Tensor]:
        return [e.decode(tokens, lens, starts, table) for e in self.all]


def _worst(verdicts: list[Verdict]) -> Verdict:
    return max(verdicts, key=lambda v: v.ratio)


def _vector(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _row(step: int, position: int, v: Verdict, consistency: Verdict | None = None) -> dict:
    row = {"step": step, "position": position, "passed": v.passed, "ratio": v.ratio, "measure": v.measure,
           "rmse": v.errors.get("rmse"), "eager_rmse": v.reference_errors.get("rmse"),
           "max_abs": v.errors.get("max_abs"), "reason": v.reason}
    if consistency is not None:
        row.update(consistency_passed=consistency.passed, consistency_ratio=consistency.ratio,
                   consistency_reason=consistency.reason)
    return row


def _teacher_forced(candidate, reference, plan: Plan, tokens: torch.Tensor) -> dict:
    """Prefill plan.prefill tokens, decode plan.steps more; every call judged; the caches after each phase."""
    shape, p, d = plan.shape, plan.prefill, plan.steps
    layout = shape.layout(reference.weights.config)
    table, start_cache = allocate(layout, [p + d], shape.columns)
    engines = Engines(candidate, reference, shape, start_cache)
    prefill = [out[:, :p] for out in engines.prefill(tokens[None, :p], _vector(0), _vector(p), table, shape)]
    caches = {"prefill": [e.read_cache() for e in engines.all]}
    steps = [engines.decode(tokens[None, q:q + 1], _vector(q + 1), _vector(q), table) for q in range(p, p + d)]
    caches["decode"] = [e.read_cache() for e in engines.all]
    return dict(table=table, start_cache=start_cache, prefill=prefill, steps=steps, caches=caches)


def decode(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy, plan: Plan = QUICK) -> dict:
    tokens = inputs.tokens[0]
    run = _teacher_forced(candidate, reference, plan, tokens)
    p, d = plan.prefill, plan.steps
    prefill_verdict = policy.judge(*run["prefill"])
    # Self-consistency: the candidate's one prefill of every token, at the decoded positions.
    whole = None
    if p + d <= plan.shape.prefill_len:
        serving = candidate.serving(plan.shape)
        serving.write_cache(run["start_cache"])
        padded = pad(tokens[None, :p + d], plan.shape.prefill_len, vocab=reference.weights.config.vocab_size)
        whole = serving.prefill(padded, _vector(0), _vector(p + d), run["table"])[0, p:p + d]
    rows, verdicts = [], [prefill_verdict]
    for j, (compiled, eager, oracle) in enumerate(run["steps"]):
        v = policy.judge(compiled, eager, oracle)
        c = None if whole is None else policy.judge(compiled[0, 0], whole[j], oracle[0, 0],
                                                    reference="its own prefill")
        verdicts += [v] + ([c] if c else [])
        rows.append(_row(j, p + j, v, c))
    failures = ([f"prefill of {p} tokens: {prefill_verdict.reason}"] if not prefill_verdict.passed else []) + [
        f"decode step {r['step']} (position {r['position']}): {r['reason']}" for r in rows if not r["passed"]] + [
        f"decode step {r['step']} (position {r['position']}) against its own prefill: {r['consistency_reason']}"
        for r in rows if not r.get("consistency_passed", True)]
    return dict(kind="decode", passed=not failures, failures=failures, verdict=_worst(verdicts).to_dict(),
                prefill_verdict=prefill_verdict.to_dict(), steps=rows,
                plan={"prefill": p, "steps": d, "self_consistency": whole is not None},
                inputs=inputs.to_record())


def cache_state(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
                plan: Plan = QUICK) -> dict:
    run = _teacher_forced(candidate, reference, plan, inputs.tokens[0])
    layout, table = plan.shape.layout(reference.weights.config), run["table"]
    unused = unused_pages(layout, table)
    phases, failures = [], []
    for phase, length in (("prefill", plan.prefill), ("decode", plan.prefill + plan.steps)):
        compiled_cache, eager_cache, oracle_cache = run["caches"][phase]
        kv = [layout.kv(cache, table[0], length) for cache in (compiled_cache, eager_cache, oracle_cache)]
        layers = []
        for layer in range(layout.n_layers):
            for i, name in enumerate(("K", "V")):
                v = policy.judge(kv[0][layer, i], kv[1][layer, i], kv[2][layer, i])
                layers.append({"layer": layer, "tensor": name, "passed": v.passed, "ratio": v.ratio,
                               "reason": v.reason})
                if not v.passed:
                    failures.append(f"after {phase}: layer {layer} {name}: {v.reason}")
        before = run["start_cache"][unused].to(compiled_cache.dtype).view(torch.uint8)
        touched = [int(p) for p, a, b in zip(unused, before, compiled_cache[unused].view(torch.uint8))
                   if not torch.equal(a, b)]
        if touched:
            failures.append(f"after {phase}: pages no sequence owns were written: {touched[:8]}")
        phases.append({"phase": phase, "positions": length, "layers": layers, "untouched_pages": len(unused),
                       "touched_pages": touched})
    return dict(kind="cache_state", passed=not failures, failures=failures, phases=phases,
                page_table=table[0].tolist(), inputs=inputs.to_record())


def batching(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
             plan: Plan = QUICK) -> dict:
    shape, lengths, steps = plan.shape, list(plan.lengths), plan.batch_steps
    layout = shape.layout(reference.weights.config)
    total = [n + steps for n in lengths]
    table, cache = allocate(layout, total, shape.columns)
    tokens = inputs.tokens[0]
    seqs = [tokens[BATCH_OFFSET * b: BATCH_OFFSET * b + n] for b, n in enumerate(total)]
    batched = candidate.serving(shape)
    batched.write_cache(cache)
    n = len(lengths)
    prompt = torch.stack([pad(s[None, :length], shape.prefill_len, seed=b, vocab=reference.weights.config.vocab_size)[0]
                          for b, (s, length) in enumerate(zip(seqs, lengths))])
    out = batched.prefill(prompt, torch.zeros(n, dtype=torch.int64), torch.tensor(lengths), table)
    batch_logits = [[out[b, :length]] for b, length in enumerate(lengths)]
    for j in range(steps):
        positions = torch.tensor([length + j for length in lengths])
        step = batched.decode(torch.stack([s[q:q + 1] for s, q in zip(seqs, positions.tolist())]), positions + 1,
                              positions, table)
        for b in range(n):
            batch_logits[b].append(step[b])
    rows, failures = [], []
    for b, (seq, length) in enumerate(zip(seqs, lengths)):
        single_table, single_cache = table[b:b + 1], cache.clone()
        engines = Engines(candidate, reference, shape, single_cache)
        alone = [[x[0, :length]] for x in engines.prefill(seq[None, :length], _vector(0), _vector(length),
                                                         single_table, shape)]
        for q in range(length, length + steps):
            for k, x in enumerate(engines.decode(seq[None, q:q + 1], _vector(q + 1), _vector(q), single_table)):
                alone[k].append(x[0])
        compiled, single, eager, oracle = (torch.cat(x) for x in (batch_logits[b], *alone))
        v_eager = policy.judge(compiled, eager, oracle)
        v_single = policy.judge(compiled, single, oracle, reference="its batch-1 run")
        rows.append({"sequence": b, "length": length, "decode_steps": steps, "passed": v_eager.passed and v_single.passed,
                     "ratio_vs_eager": v_eager.ratio, "ratio_vs_batch1": v_single.ratio,
                     "max_abs_vs_batch1": metrics.max_abs(compiled, single),
                     "bitwise_equal_batch1": bool(torch.equal(compiled, single))})
        failures += [f"sequence {b} (length {length}): {v.reason}" for v in (v_eager, v_single) if not v.passed]
    return dict(kind="batching", passed=not failures, failures=failures, sequences=rows,
                page_table=table.tolist(), inputs=inputs.to_record())


def chunked_prefill(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
                    plan: Plan = QUICK) -> dict:
    shape, chunks = plan.shape, plan.chunks
    total = sum(chunks)
    layout = shape.layout(reference.weights.config)
    table, cache = allocate(layout, [total], shape.columns)
    tokens = inputs.tokens[0, :total]
    chunked = Engines(candidate, reference, shape, cache)
    pieces, start = [], 0
    for n in chunks:
        pieces.append([x[0, :n] for x in chunked.prefill(tokens[None, start:start + n], _vector(start),
                                                        _vector(start + n), table, shape)])
        start += n
    compiled, eager, oracle = (torch.cat(x) for x in zip(*pieces))
    whole = candidate.serving(shape)
    whole.write_cache(cache)
    one = whole.prefill(pad(tokens[None], shape.prefill_len, vocab=reference.weights.config.vocab_size),
                        _vector(0), _vector(total), table)[0, :total]
    v_eager = policy.judge(compiled, eager, oracle)
    v_whole = policy.judge(compiled, one, oracle, reference="its one-chunk prefill")
    verdicts = (v_eager, v_whole)
    failures = [f"chunks {list(chunks)} against {what}: {v.reason}"
                for what, v in (("eager's", v_eager), ("one prefill", v_whole)) if not v.passed]
    return dict(kind="chunked_prefill", passed=not failures, failures=failures, chunks=list(chunks),
                verdict=_worst(verdicts).to_dict(), verdict_vs_eager=v_eager.to_dict(),
                verdict_vs_one_prefill=v_whole.to_dict(), max_abs_vs_one_prefill=metrics.max_abs(compiled, one),
                inputs=inputs.to_record())


def greedy(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy, plan: Plan = QUICK) -> dict:
    shape, p, g = plan.shape, plan.prefill, plan.generate
    layout = shape.layout(reference.weights.config)
    table, cache = allocate(layout, [p + g], shape.columns)
    engines = Engines(candidate, reference, shape, cache)
    logits = [x[0, p - 1] for x in engines.prefill(inputs.tokens[:, :p], _vector(0), _vector(p), table, shape)]
    generated, rows, split = [], [], None
    for j in range(g):
        v = policy.judge(*logits)
        compiled, eager = (int(x.argmax()) for x in logits[:2])
        top2 = logits[1].topk(2).values
        rows.append(_row(j, p + j, v) | {"eager_token": eager, "compiled_token": compiled})
        if compiled != eager:
            split = {"step": j, "position": p + j, "eager_token": eager, "compiled_token": compiled,
                     "eager_margin": float(top2[0] - top2[1]),
                     "eager_gap_to_compiled_choice": float(logits[1][eager] - logits[1][compiled]),
                     "near_tie": v.passed}
            break
        generated.append(eager)
        if j + 1 < g:
            q = p + j
            logits = [x[0, 0] for x in engines.decode(_vector(eager)[None], _vector(q + 1), _vector(q), table)]
    failures = [f"step {r['step']} (position {r['position']}): {r['reason']}" for r in rows if not r["passed"]]
    if split and not split["near_tie"]:
        failures.append(f"generation split at step {split['step']}: compiled chose {split['compiled_token']}, "
                        f"eager {split['eager_token']} by a margin of {split['eager_margin']:.3g}")
    tokenizer = reference.tokenizer() if reference.tokenizer else None
    return dict(kind="greedy", passed=not failures, failures=failures, generated=generated, split=split, steps=rows,
                text=tokenizer.decode(generated) if tokenizer else None,
                verdict=max(rows, key=lambda r: r["ratio"]), inputs=inputs.to_record())


def _decode_mode(engine: Serving, prompt: torch.Tensor, prefix: int, table, cache, shape: ServingShape,
                 vocab: int) -> torch.Tensor:
    """perplexity_iree's logits of a prompt: prefill `prefix` tokens, then decode the rest teacher-forced;
    the [len - 1, vocab] rows predicting prompt[1:]."""
    engine.write_cache(cache)
    rows = [engine.prefill(pad(prompt[None, :prefix], shape.prefill_len, vocab), _vector(0), _vector(prefix),
                           table)[0, :prefix]]
    rows += [engine.decode(prompt[None, q:q + 1], _vector(q + 1), _vector(q), table)[0]
             for q in range(prefix, len(prompt) - 1)]
    return torch.cat(rows)


def _per_prompt_ppl(stats: Stats) -> dict[str, float]:
    """sharktank's figure: each prompt's perplexity, averaged over prompts (not the token mean)."""
    return {e.name: sum(math.exp(s / n) for s, n in zip(e.window_nll, stats.window_tokens)) / stats.n_windows
            for e in stats.engines}


def decode_perplexity(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy,
                      plan: Plan = QUICK) -> dict:
    """Consecutive prompts of the inputs, each scored three ways from a fresh cache: the candidate in decode
    mode, eager in decode mode, and the candidate in prefill mode (one prefill of the prompt). Two paired gates
    on the per-token NLLs (perplexity/gate.py: the mean dNLL, and the mean KLD, which no mix of errors of both
    signs cancels): decode against prefill mode of the same program (a cache or decode bug, with no eager at
    all) and the candidate's decode mode against eager's."""
    shape, n, prefix = plan.shape, plan.prompt_len, plan.prompt_prefix
    if n > shape.prefill_len:
        raise ValueError(f"prompts of {n} tokens do not fit one prefill of {shape.prefill_len}")
    if inputs.tokens.shape[1] < plan.prompts * n:
        raise ValueError(f"{plan.prompts} prompts of {n} tokens need {plan.prompts * n} input tokens, not "
                         f"{inputs.tokens.shape[1]}")
    layout, vocab = shape.layout(reference.weights.config), reference.weights.config.vocab_size
    compiled, eager = candidate.serving(shape), reference.eager.serving(shape)
    vs_prefill, vs_eager = Accumulator(("iree prefill mode", "iree decode mode")), Accumulator(("eager decode mode",
                                                                                                "iree decode mode"))
    for w in range(plan.prompts):
        prompt = inputs.tokens[0, w * n:(w + 1) * n]
        table, cache = allocate(layout, [n], shape.columns, seed=w)
        decoded = [_decode_mode(e, prompt, prefix, table, cache, shape, vocab) for e in (compiled, eager)]
        compiled.write_cache(cache)
        prefilled = compiled.prefill(pad(prompt[None], shape.prefill_len, vocab), _vector(0), _vector(n), table)
        vs_prefill.add(prompt[1:], [prefilled[0, :n - 1], decoded[0]])
        vs_eager.add(prompt[1:], decoded[::-1])
    stats = {"decode_vs_prefill": vs_prefill.result(), "decode_vs_eager": vs_eager.result()}
    gates = {f"{name}.{g.gate}": g for name, s in stats.items()
             for g in (gate.check_pair(s, policy.dtype), gate.check_kld(s, policy.dtype))}
    failures = [f"{name.split('.')[0]}: {g.message}" for name, g in gates.items() if not g.passed]
    return dict(kind="decode_perplexity", passed=not failures, failures=failures,
                protocol={"bos": "none", "prompts": plan.prompts, "prompt_tokens": n, "prefill": prefix,
                          "decode_steps": n - 1 - prefix, "scored": "every position, predicting the next token"},
                per_prompt_ppl={**_per_prompt_ppl(stats["decode_vs_eager"]),
                                **_per_prompt_ppl(stats["decode_vs_prefill"])},
                stats={name: s.to_record() for name, s in stats.items()},
                gates={name: g.to_record() for name, g in gates.items()}, inputs=inputs.to_record())


def bisect_decode(candidate: Candidate, reference: Reference, inputs: Inputs, policy: Policy, plan: Plan = QUICK,
                  artifacts: Path | None = None) -> dict:
    """A failing decode localised: the first decode step over budget (against eager or its own prefill), then
    the first decoder layer of that step whose compiled output, on eager's input and eager's cache, is over
    budget, and the sub-block inside it (bisect.first_propagating_failure), with a reproducer of that layer's
    call. One "serving_layers" program (decode_layer_<i>) serves every layer; its compile flags, which differ
    from the tested program's where iree/targets.py says why (BISECT_DECODE_FLAGS), are in the record."""
    found = decode(candidate, reference, inputs, policy, plan)
    step = next((r["step"] for r in found["steps"] if not (r["passed"] and r.get("consistency_passed", True))), None)
    if step is None:
        return dict(kind="bisect_decode", diverged=False, step=None, layer=None, sub_block=None, layers=[])
    shape, p, tokens = plan.shape, plan.prefill, inputs.tokens[0]
    layout = shape.layout(reference.weights.config)
    table, cache = allocate(layout, [p + plan.steps], shape.columns)
    eager, oracle = reference.eager.serving(shape), reference.oracle.serving(shape)
    for engine in (eager, oracle):  # eager's history up to the step; the oracle only needs the model
        engine.write_cache(cache)
    eager.prefill(pad(tokens[None, :p], shape.prefill_len, vocab=reference.weights.config.vocab_size), _vector(0),
                  _vector(p), table)
    q = p + step
    for position in range(p, q):
        eager.decode(tokens[None, position:position + 1], _vector(position + 1), _vector(position), table)
    compiled = candidate.serving(shape, "serving_layers")
    args = (_vector(q + 1), _vector(q), table)
    h = eager.embed(tokens[None, q:q + 1])
    layers, first, sub_blocks = [], None, []
    for i in range(layout.n_layers):
        state = eager.read_cache()  # what layer i of the step reads: eager's cache, with earlier layers' writes
        compiled.write_cache(state)
        oracle.write_cache(state)
        out_c, taps_c = compiled.decode_layer(i, h, *args)
        out_o, taps_o = oracle.decode_layer(i, h, *args)
        out_e, taps_e = eager.decode_layer(i, h, *args)
        verdict = policy.judge(out_c, out_e, out_o, isolated=True)
        layers.append(Part(f"layer_{i}", "isolated", verdict).row())
        parts = [Part(n, "isolated", policy.judge(taps_c[n], taps_e[n], taps_o[n], isolated=True)) for n in taps_c]
        if not verdict.passed or not all(part.verdict.passed for part in parts):
            first, sub_blocks = i, parts
            break
        h = out_e
    culprit = first_propagating_failure(sub_blocks, sub_block_consumers(reference.weights.config))
    reproducer = compiled.reproducer(artifacts) if first is not None and artifacts is not None else None
    return dict(kind="bisect_decode", diverged=True, step=step, position=q,
                layer=None if first is None else f"layer_{first}", sub_block=culprit.name if culprit else None,
                layers=layers, sub_blocks=[s.row() for s in sub_blocks], reproducer=reproducer,
                decode_failure=found["failures"][0], layer_program_flags=compiled.flags)


def format_bisect_decode(rec: dict) -> str:
    """One line of where bisection through decode points, and its reproducer."""
    if not rec["diverged"]:
        return "bisect through decode: no decode step over budget"
    where = (f"{rec['layer']}, sub-block {rec['sub_block'] or 'none over budget'}" if rec["layer"] else
             "no decoder layer over budget on eager's inputs (the divergence is in the head or between layers)")
    return (f"bisect through decode: step {rec['step']} (position {rec['position']}), {where}"
            + (f"; reproducer: {rec['reproducer']}" if rec["reproducer"] else ""))
