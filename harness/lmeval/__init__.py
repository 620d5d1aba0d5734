"""lm-evaluation-harness backends on harness candidates, and offline tasks."""
