"""The T5 v1.1 encoder family (config, model, Hugging Face checkpoint reading)."""
