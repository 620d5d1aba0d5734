"""One run of the harness: its options, the configuration matrix, and each configuration's case."""
