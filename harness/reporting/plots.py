"""PNG plots of records (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def layer_errors(rec: dict, path: Path) -> Path:
    """Each part's error relative to its budget (1 = the budget), isolated and propagated."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for mode, style in (("isolated", "o-"), ("propagated", "s--")):
        rows = [r for r in rec["parts"] if r["mode"] == mode]
        ax.plot(range(len(rows)), [r["ratio"] for r in rows], style, label=mode, markersize=3)
        names = [r["part"].removeprefix("layer_") for r in rows]
    ax.axhline(1.0, color="red", linewidth=1, label="budget")
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, fontsize=7, rotation=90 if len(names) > 40 else 0)
    ax.set_xlabel("part (embedding, decoder layers, head)")
    ax.set_ylabel("error / budget")
    ax.set_title(f"{rec['config']}: per-layer error vs budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
