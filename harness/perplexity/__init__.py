"""Perplexity of one engine, or of two engines on the same tokens (eager vs compiled), with the
statistics and gates a nightly can rely on.

protocol.py: which tokens each window holds and which positions are scored, recorded with every result.
stats.py: streaming per-token statistics (llama.cpp's definitions), computed in fp64 from full rows.
runner.py: one prefill per window per engine, feeding the statistics.
journal.py: each window's results as it finishes (resume, shards).
eager_cache.py: eager's results of each window kept between runs (the KLD then over eager's top tokens).
gate.py: the paired (compiled vs eager) gate and the golden-value gate, and the golden files.
"""
