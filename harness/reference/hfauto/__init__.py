"""The Hugging Face family: any transformers causal LM as the reference, as transformers writes it (config, model)."""
