"""Everything that touches IREE: export (iree-turbine), compile (iree-compile), run (iree.runtime)."""
