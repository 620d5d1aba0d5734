"""Tokenizer speed: the whole bundled WikiText-2 test file through SmolLM2's tokenizer (the harness builds it
from GGUF metadata on the Rust `tokenizers` library; a pure-Python BPE takes minutes).

    .venv/bin/python bench/tokenizer.py
"""

from __future__ import annotations

import time

from tabulate import tabulate


def main() -> None:
    from harness.common.host import machine
    from harness.data.dataset import BUNDLED_PATH
    from harness.reference.tokenizer import Tokenizer
    from harness.reference.weights.packaged import shipped_smollm2_gguf

    start = time.perf_counter()
    tokenizer = Tokenizer.from_gguf(shipped_smollm2_gguf())
    built = time.perf_counter() - start
    text = BUNDLED_PATH.read_text(encoding="utf-8")
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    seconds = time.perf_counter() - start
    m = machine()
    print(f"{m['cpu']}, {m['threads']} threads")
    print(tabulate([[tokenizer.name, f"{built:.2f}", f"{len(text.encode()) / 1e6:.2f}", len(ids), f"{seconds:.2f}",
                     f"{len(ids) / seconds:,.0f}"]], tablefmt="github",
                   headers=["tokenizer", "build s", "text MB", "tokens", "encode s", "tokens/s"]))


if __name__ == "__main__":
    main()
