"""lm-evaluation-harness models backed by harness engines: "iree" (the compiled module) and "harness-eager"
(the eager PyTorch reference), so any lm-eval task scores the exact engines the harness validates.

    python -m harness.lmeval.backend --model iree \
        --model_args model=smollm2-135m,dtype=fp32,max_length=512 --tasks wikitext_local --limit 2

lm-eval 0.4.13 finds models only through its registry, filled by imports (it has no plugin entry points),
so `python -m harness.lmeval.backend` is `lm_eval` with this module imported; it also puts the harness's
tasks (harness/lmeval/tasks) on the include path unless `--include_path` is given. From Python, import
this module before `lm_eval.simple_evaluate(model="iree", ...)`.

model_args: model (a harness model name or path), dtype (fp32), tp (1), engine (iree | eager; the
default is the registered name's), max_length (512: the compiled sequence length, and the window of
`loglikelihood_rolling`), device (the IREE device URI, local-task), target (the HAL target device, local),
eager_mode (emulated | native, for fp16/bf16 eager). lm-eval's own --device and --batch_size are ignored:
the device is an IREE URI, and every request is one [1, max_length] prefill.

Scoring is one prefill per request (per window for rolling), never per-token decode. The compiled module's
sequence length is static, so tokens are right-padded to max_length and only the real positions are read:
attention is causal, so the padded tail cannot change them. Log-probs are taken in fp64 from the engine's
fp32 logits, as the harness's perplexity statistics are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  # lm-eval imports its own models only while its registry is empty
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from harness.candidates.eager import EagerCandidate
from harness.common.errors import HarnessError
from harness.iree.targets import Target
from harness.reference.tokenizer import Tokenizer
from harness.run.case import Case
from harness.run.config import RunConfig

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
ENGINES = ("iree", "eager")
PAD_ID = 0  # any id: right padding sits after every position that is read


@register_model("iree")
class HarnessLM(TemplateLM):
    default_engine = "iree"

    def __init__(self, model: str, dtype: str = "fp32", tp: int = 1, engine: str | None = None,
                 max_length: int = 512, device: str = "", target: str = "local",
                 eager_mode: str = "emulated", tokenizer: Tokenizer | None = None):
        """`tokenizer` is for use from Python: one to use instead of the model's (toy models have none)."""
        super().__init__()
        engine = engine or self.default_engine
        if engine not in ENGINES:
            raise HarnessError(f"lm-eval model_args engine={engine}: unknown; known: {', '.join(ENGINES)}")
        self.max_length = int(max_length)
        config = RunConfig(str(model), dtype, int(tp), seq_len=self.max_length,
                           target=Target(hal_target_device=target, device_uri=device), eager_mode=eager_mode)
        self.case = Case(config)
        if not self.case.reference.outputs_logits:
            raise HarnessError(f"lm-eval model {model}: it outputs hidden states, not next-token logits (an encoder)")
        model_max = self.case.weights.config.max_seq_len
        if not 2 <= self.max_length <= model_max:
            raise HarnessError(f"lm-eval model_args max_length={self.max_length}: must be in 2..{model_max} "
                               f"(the model's maximum sequence length)")
        if tokenizer is None and self.case.spec.load_tokenizer is None:
            raise HarnessError(f"model {model} has no tokenizer, and lm-eval's requests are text")
        self.tokenizer = tokenizer or self.case.spec.load_tokenizer()
        # Any candidate: the compiled program, or eager itself.
        self.candidate = self.case.candidate if engine == "iree" else EagerCandidate(self.case.reference.eager)
        self.engine = self.candidate.forward(self.max_length)
        # Only a compiled module needs its static length; eager runs each request at its own length.
        self.static_length = self.max_length if engine == "iree" else None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "HarnessLM":
        # lm-eval's additional_config (--device cuda:0 by default, --batch_size) means nothing here, and its
        # `device` would collide with the IREE device of model_args.
        return super().create_from_arg_string(arg_string)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "HarnessLM":
        return super().create_from_arg_obj(arg_dict)

    def get_model_info(self) -> dict:
        """Provenance that lm-eval copies into its results' config."""
        return {"harness_config": self.case.config.id, "engine": self.engine.name,
                "max_length": self.max_length, "command": self.case.config.command(),
                "weights_sha256": self.case.weights.sha256, "tokenizer": self.tokenizer.name,
                "tokenizer_fingerprint": self.tokenizer.fingerprint}

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        # As lm-eval's HFLM: BOS conditions the first token when the tokenizer has one, else EOS.
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """None adds BOS as the tokenizer itself would (as HFLM leaves it to the HF tokenizer)."""
        add_bos = self.tokenizer.add_bos if add_special_tokens is None else add_special_tokens
        ids = self.tokenizer.encode(string)
        return [self.tokenizer.bos_id] + ids if add_bos and self.tokenizer.bos_id is not None else ids

    def log_probs(self, tokens: list[int]) -> torch.Tensor:
        """[len(tokens), vocab] fp64 log-probabilities of the next token after each position: one prefill."""
        n = len(tokens)
        padded = tokens + [PAD_ID] * (self.static_length - n) if self.static_length else tokens
        logits = self.engine.logits(torch.tensor([padded], dtype=torch.int64))
        return torch.log_softmax(logits[0, :n].double(), dim=-1)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        results = []
        for key, context, continuation in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
            if not 1 <= len(continuation) <= self.max_length:
                raise HarnessError(f"a continuation of {len(continuation)} tokens: must be 1..max_length "
                                   f"({self.max_length})")
            # As HFLM: the last max_length + 1 tokens, the last one only predicted (left truncation).
            inputs = (context + continuation)[-(self.max_length + 1):][:-1]
            rows = self.log_probs(inputs)[len(inputs) - len(continuation):]
            targets = torch.tensor(continuation)
            result = (rows.gather(1, targets[:, None]).sum().item(), bool((rows.argmax(-1) == targets).all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Every token scored once, in disjoint windows of max_length with the prefix token first (as HFLM,
        but the text is encoded without special tokens: the prefix is the BOS)."""
        results = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="loglikelihood_rolling"):
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            scored = self._loglikelihood_tokens([(None, c, t) for c, t in windows], disable_tqdm=True)
            total = sum(ll for ll, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            results.append(total)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy, recomputing the whole prefix at each step (one prefill per generated token)."""
        eos = self.tokenizer.decode([self.eot_token_id])
        results = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="generate_until"):
            kwargs = normalize_gen_kwargs(gen_kwargs)
            if kwargs["do_sample"]:
                raise HarnessError("the harness's lm-eval backends decode greedily only (do_sample=True asked)")
            until = handle_stop_sequences(kwargs["until"], eos=eos)
            max_gen = kwargs["max_gen_toks"]
            if max_gen >= self.max_length:
                raise HarnessError(f"max_gen_toks {max_gen} leaves no room for a context in max_length "
                                   f"{self.max_length}")
            tokens = self.tok_encode(context)[-(self.max_length - max_gen):]
            generated: list[int] = []
            text = ""
            while len(generated) < max_gen:
                token = int(self.log_probs(tokens + generated)[-1].argmax())
                if token == self.eot_token_id:
                    break
                generated.append(token)
                text = self.tokenizer.decode(generated)
                if any(stop and stop in text for stop in until):
                    break
            text = postprocess_generated_text(text, until, None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results


@register_model("harness-eager")
class HarnessEagerLM(HarnessLM):
    default_engine = "eager"


def main(argv: list[str] | None = None) -> None:
    """`lm_eval`'s command line, with these models registered and the harness's tasks included."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    # lm-eval 0.4.13 takes one --include_path; one given by the user replaces the harness's tasks.
    if args and not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = [sys.argv[0], *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
