"""PNG plots (matplotlib, Agg): throughput vs batch size per backend; latency breakdown per graph."""
from __future__ import annotations

import io

from quantart_runtime.util.atomic import write_bytes

from .report import BACKEND_ORDER, PART_LABELS, PARTS


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def throughput_plot(report: dict, path) -> None:
    """PNG at ``path``: images/s against batch size, one line per backend, resolution and cache mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = report["settings"]["resolutions"]
    fig, axes = plt.subplots(1, max(1, len(resolutions)), figsize=(5.5 * max(1, len(resolutions)), 4), squeeze=False)
    if not resolutions:   # only resolution rows (large images) were measured
        axes[0][0].text(0.5, 0.5, "no backend matrix sizes", ha="center", va="center")
    for ax, res in zip(axes[0], resolutions):
        for name in BACKEND_ORDER:
            entry = report["backends"].get(name)
            if not entry or entry["status"] != "ok":
                continue
            for mode, style in (("off", "-"), ("on", "--")):
                runs = sorted((r["batch"], r["e2e"]["images_per_s"]) for r in entry["runs"]
                              if r["resolution"] == res and r["style_cache"] == mode)
                if runs:
                    ax.plot([b for b, _ in runs], [t for _, t in runs], style, marker="o",
                            label=f"{name} (style cache {mode})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("throughput (images/s)")
        ax.set_title(f"{res}×{res}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Throughput vs batch size")
    _save(fig, path)
    plt.close(fig)


def breakdown_plot(report: dict, path) -> None:
    """PNG at ``path``: stacked per-graph latency (p50) per backend, resolution and batch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, stacks = [], []
    for name in BACKEND_ORDER:
        entry = report["backends"].get(name)
        if not entry or entry["status"] != "ok":
            continue
        for g in entry.get("graphs", []):
            labels.append(f"{name}\n{g['resolution']}² b{g['batch']}")
            per_image = {p: g["graphs"][p]["p50_ms"] / (1 if p == "style_encoder" else g["batch"])
                         for p in PARTS if p in g["graphs"]}
            stacks.append(per_image)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) + 2), 4.5))
    bottoms = [0.0] * len(labels)
    for part in PARTS:
        values = [s.get(part, 0.0) for s in stacks]
        ax.bar(range(len(labels)), values, bottom=bottoms, label=PART_LABELS[part])
        bottoms = [b + v for b, v in zip(bottoms, values)]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("ms per image (style encoder: per batch)")
    ax.set_title("Latency breakdown per graph (p50)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)
