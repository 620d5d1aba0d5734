"""The Llama family: its shapes (config.py) and its eager model (model.py)."""
