"""Evaluation data: the bundled WikiText-2 raw test file (wikitext2/, with its attribution) and the loader
for it, local text files and Hugging Face datasets (dataset.py)."""
