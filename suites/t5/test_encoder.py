"""The T5 v1.1 encoder family (Flux's text encoder; harness/reference/t5): its output, the final norm's hidden
states, end to end, and each layer with its sub-blocks, compiled against eager in fp32, fp16 and bf16, judged
against the fp64 oracle by the tolerance policy. The report shows beside each verdict what the fixed atol 1e-4 /
rtol 1.5e-3 of sharktank's T5 tests says. An encoder has no next-token logits: no perplexity or serving checks."""

from harness.suites import test_end_to_end, test_layers  # noqa: F401 - collected here, over the T5 configurations
