"""Numerics validation and perplexity harness for LLMs compiled with IREE."""
