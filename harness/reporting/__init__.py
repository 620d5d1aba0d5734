"""Records and their views: summaries, plots, the run-to-run diff, merges, expected failures."""
