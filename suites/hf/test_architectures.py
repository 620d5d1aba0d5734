"""The Hugging Face family: transformers' own causal LMs (harness/reference/hfauto; IPEX's verified architectures
where transformers has them, tiny seeded configurations with each family's feature on), exported as transformers
writes them: end to end in fp32 and bf16 by default; with --nightly also layer by layer (the model's decoder blocks,
their direct children as sub-blocks) and in fp16, weight-only int8, Q4_1 and W8A8 int8 (harness/run/matrix.py).
The report's model x dtype matrix is IPEX's table, measured."""

from harness.suites import test_end_to_end, test_layers  # noqa: F401 - collected here, over the hf configurations
