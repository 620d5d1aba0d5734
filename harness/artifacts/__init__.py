"""Programs the harness did not build: a user's sharktank export (MLIR or vmfb, config JSON, IRPA parameters)
read, checked for consistency and judged against an eager reference made from its own parameters."""
