"""End to end: the IREE-compiled model's logits against eager PyTorch in the same dtype, both judged against
an fp64 oracle by the tolerance policy; with --tp N > 1, also against the compiled TP 1 model (harness/suites.py,
shared by every family's suite)."""

from harness.suites import test_end_to_end  # noqa: F401 - collected here, over the llama family's configurations
