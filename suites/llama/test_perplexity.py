"""WikiText-2 perplexity, eager and compiled on the same windows: the paired gate between them and each
engine against its golden value (harness/suites.py; harness/perplexity/gate.py says how both decide)."""

from harness.suites import test_perplexity  # noqa: F401 - collected here, over the llama family's configurations
