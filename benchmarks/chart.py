"""The PNG chart: one panel per group, a bar per case at its median, a whisker to its p95.

nskernel's own figures are orange, the others blue; cases that have no figure show their
status and reason in grey.

Imported only after every case has run: matplotlib pulls in numpy, whose thread pool
would make the benchmark process multi-threaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use("Agg"): the backend must be chosen first

OK_COLOR = "#4c72b0"
NSKERNEL_COLOR = "#dd8452"
MISSING_COLOR = "#999999"
OURS = ("nskernel", "sandbox")  # case ids containing these are nskernel's own figures


def _number(x: float) -> str:
    """Three significant digits, never in scientific notation (1070, 45.0, 1.41)."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def render(results: dict[str, Any], path: Path) -> None:
    groups = [
        (gid, g, [(cid, c) for cid, c in results["cases"].items() if c["group"] == gid])
        for gid, g in results["groups"].items()
    ]
    groups = [(gid, g, cases) for gid, g, cases in groups if cases]
    heights = [0.45 * len(cases) + 1.2 for _, _, cases in groups]
    fig, axes = plt.subplots(
        len(groups),
        1,
        figsize=(10, sum(heights) + 1.0),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (_, g, cases) in zip(axes[:, 0], groups, strict=True):
        _panel(ax, g, cases)
    m = results["machine"]
    fig.suptitle(
        f"nskernel benchmarks ({results['mode']} run, {m['date'][:10]})\n"
        f"{m['cpu']}, {m['cores']} cores, {m['kernel']}, {m['python']}",
        fontsize=10,
    )
    # Keep 0.4 inch at the top for the two-line title, whatever the figure height.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (sum(heights) + 1.0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _panel(ax: Any, g: dict[str, Any], cases: list[tuple[str, dict[str, Any]]]) -> None:
    ok = [c for _, c in cases if c["status"] == "ok"]
    unit = ok[0]["unit"] if ok else ""
    # Launch times span three orders of magnitude (API to docker): log scale keeps both
    # ends readable; a narrow range reads better on a linear axis.
    positive = bool(ok) and min(c["median"] for c in ok) > 0  # differences can be negative
    log = positive and max(c["p95"] for c in ok) / min(c["median"] for c in ok) > 20
    top = max((c["p95"] for c in ok), default=1.0)
    labels = []
    for y, (cid, c) in enumerate(cases):
        labels.append(c["label"])
        if c["status"] != "ok":
            ax.text(
                0.01,
                y,
                f"{c['status']}: {_shorten(c['reason'])}",
                va="center",
                fontsize=7,
                color=MISSING_COLOR,
                transform=ax.get_yaxis_transform(),
            )
            continue
        color = NSKERNEL_COLOR if any(k in cid for k in OURS) else OK_COLOR
        ax.barh(y, c["median"], color=color, height=0.6)
        ax.errorbar(
            c["median"], y, xerr=[[0], [c["p95"] - c["median"]]], color="black", capsize=3, lw=1
        )
        ax.text(
            c["p95"] * (1.08 if log else 1.0) + (0 if log else top * 0.01),
            y,
            f"{_number(c['median'])} {c['unit']}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    # Fixed limits, top to bottom: rows without a bar (not available) stay inside the axes.
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if not ok:
        ax.set_xticks([])
    elif log:
        ax.set_xscale("log")
        ax.set_xlim(min(c["median"] for c in ok) / 2, top * 4)
    else:
        ax.set_xlim(min(0.0, *(c["median"] for c in ok)) * 1.25, top * 1.25)
    ax.set_xlabel(f"{unit}, median (bar) and p95 (whisker)" if unit else "")
    ax.set_title(g["title"], fontsize=10, loc="left")
    ax.grid(axis="x", alpha=0.3)


def _shorten(text: str, limit: int = 90) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
