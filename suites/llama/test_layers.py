"""Layer by layer: the compiled embedding, each decoder layer and the head against eager, isolated and
propagated, judged by the same tolerance policy as the end-to-end check; with --bisect-on-fail, a failing
configuration is bisected to its first diverging layer and sub-block (harness/suites.py, shared by every family's
suite)."""

from harness.suites import test_layers  # noqa: F401 - collected here, over the llama family's configurations
