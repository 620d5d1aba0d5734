"""Text <-> token ids, from a GGUF file's metadata or a Hugging Face tokenizer.json, on the `tokenizers`
library (Rust: the 1.3 MB WikiText test file encodes in about a second).

A GGUF carries no tokenizer.json, only llama.cpp's vocabulary, merges and special-token metadata;
transformers' GGUF conversion turns those into the same `tokenizers` pipeline that `AutoTokenizer`
builds from that file, so the harness and transformers tokenize alike.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import tokenizers

from harness.common.errors import HarnessError


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, *, name: str, bos_id: int | None, eos_id: int | None,
                 add_bos: bool):
        self.backend = backend
        # A tokenizer.json may configure truncation (to 512 tokens, say) that would silently cut a
        # long text short; a perplexity run tokenizes whole files.
        backend.no_truncation()
        backend.no_padding()
        self.name, self.bos_id, self.eos_id, self.add_bos = name, bos_id, eos_id, add_bos

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added (BOS is the caller's choice: `add_bos`)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the serialized tokenizer (the backend's JSON and the BOS/EOS settings), so that a
        result can pin exactly what turned its text into ids."""
        serialized = json.dumps({"tokenizer": json.loads(self.backend.to_str()), "bos_id": self.bos_id,
                                 "eos_id": self.eos_id, "add_bos": self.add_bos}, sort_keys=True)
        return hashlib.sha256(serialized.encode()).hexdigest()

    @classmethod
    def from_gguf(cls, path: str | Path) -> "Tokenizer":
        from transformers.integrations.gguf import (
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )

        path = Path(path)
        if not path.is_file():
            raise HarnessError(f"{path}: no such GGUF file")
        try:
            architecture, vocab, settings = get_gguf_tokenizer(str(path))
            backend, _ = convert_gguf_tokenizer(architecture, vocab)
        except Exception as e:  # corrupt file, no tokenizer metadata, a tokenizer type transformers lacks
            raise HarnessError(f"{path}: cannot build a tokenizer from its metadata: {type(e).__name__}: "
                               f"{' '.join(str(e).split())}")
        # tokenizer.ggml.add_bos_token; where a file lacks it, transformers assumes BOS for sentencepiece
        # vocabularies (as llama.cpp does) and none otherwise.
        return cls(backend, name=path.name, bos_id=vocab.get("bos_token_id"),
                   eos_id=vocab.get("eos_token_id"), add_bos=bool(settings.get("add_bos_token", False)))

    @classmethod
    def from_hf(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
            config_file = path / "tokenizer_config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        except Exception as e:  # missing or malformed file
            raise HarnessError(f"{path}: cannot read a Hugging Face tokenizer: {type(e).__name__}: "
                               f"{' '.join(str(e).split())}")

        def token_id(key: str) -> int | None:
            token = config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return backend.token_to_id(token) if token else None

        bos_id = token_id("bos_token")
        # Without an explicit flag, the tokenizer adds BOS if its post-processor does.
        adds_bos = bos_id is not None and backend.encode("a", add_special_tokens=True).ids[:1] == [bos_id]
        return cls(backend, name=path.name, bos_id=bos_id, eos_id=token_id("eos_token"),
                   add_bos=bool(config.get("add_bos_token", adds_bos)))
