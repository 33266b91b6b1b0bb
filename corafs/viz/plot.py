"""``corafs plot``: a picture of a run (matplotlib, an optional extra: ``pip install
corafs[plot]``). On top, a heatmap of each tensor's relative change per commit (rows grouped
by layer, log colour scale); below, line plots of the metrics the run logged, on the same
commit axis (labelled by step where the commits carry one, else by date)."""
from __future__ import annotations

import datetime
import math
from typing import Optional, Sequence

import numpy as np

from ..errors import CorafsError
from ..core.evolution import Evolution


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise CorafsError("corafs plot needs matplotlib: pip install 'corafs[plot]'") from None
    matplotlib.use("Agg")                 # files only: no screen, no GUI toolkit
    import matplotlib.pyplot as plt
    return plt


def axis_labels(ev: Evolution) -> list[str]:
    """Commit axis labels: ``step`` when every commit has one, else the commit date."""
    steps = [c.meta.get("step") for c in ev.commits]
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in steps):
        return [f"{s:g}" for s in steps]
    return [datetime.datetime.fromtimestamp(c.time).strftime("%m-%d %H:%M")
            for c in ev.commits]


def metric_keys(ev: Evolution) -> list[str]:
    """Numeric metadata keys of the range, step and epoch left out (they are the axis)."""
    from ..core.commitmeta import number
    keys = set()
    for c in ev.commits:
        for k, v in c.meta.items():
            if k not in ("step", "epoch") and number(v) is not None:
                keys.add(k)
    return sorted(keys)


def render(ev: Evolution, out: str, metrics: Optional[Sequence[str]] = None,
           title: Optional[str] = None, dpi: int = 100):
    """Draw ``ev`` into ``out`` (``.png`` or ``.svg``); returns the figure's heatmap image
    (its array is tensors x commits) and the figure size in pixels."""
    if not out.lower().endswith((".png", ".svg")):
        raise CorafsError(f"{out}: the picture is written as .png or .svg")
    plt = _pyplot()
    from matplotlib.colors import LogNorm
    metrics = list(metric_keys(ev) if metrics is None else metrics)
    n_t, n_c = ev.change.shape
    heat_h = min(9.0, max(3.0, 0.06 * n_t + 1.5))
    width = min(16.0, max(7.0, 0.35 * n_c + 4.0))
    rows = [heat_h] + ([2.2] * len(metrics))
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, sum(rows) + 0.8), dpi=dpi,
                             sharex=True, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": rows})
    ax = axes[0][0]
    data = np.ma.masked_invalid(ev.change)
    positive = data[data > 0]
    lo = float(positive.min()) if positive.size else 1e-8
    hi = float(positive.max()) if positive.size else 1.0
    lo = max(lo, hi * 1e-6)
    # grey: no parent, or the tensor is missing; white: unchanged (frozen, buffers)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee", under="#ffffff")
    img = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap,
                    norm=LogNorm(vmin=lo, vmax=max(hi, lo * 10)))
    layers = ev.layers()
    step = max(1, len(layers) // 40)
    ax.set_yticks([(a + b - 1) / 2 for _g, a, b in layers[::step]])
    ax.set_yticklabels([g for g, _a, _b in layers[::step]], fontsize=7)
    for _g, a, _b in layers[1:]:
        ax.axhline(a - 0.5, color="white", linewidth=0.4)
    # the colour bar above the heatmap: beside it, it would narrow the heatmap and its
    # columns would no longer line up with the metric plots below
    cb = fig.colorbar(img, ax=ax, location="top", fraction=0.05, pad=0.02, aspect=50)
    cb.set_label("‖Δw‖ / ‖w‖ against the commit before (white: unchanged, grey: no parent)",
                 fontsize=8)
    fig.suptitle(title or f"{ev.path}: relative change per tensor and commit", fontsize=10)
    labels = axis_labels(ev)
    for i, key in enumerate(metrics, start=1):
        m = axes[i][0]
        ys = ev.metric(key)
        xs = [k for k, y in enumerate(ys) if y is not None and math.isfinite(y)]
        m.plot(xs, [ys[k] for k in xs], marker="o", markersize=3, linewidth=1.2)
        m.set_ylabel(key, fontsize=8)
        m.grid(True, alpha=0.3)
    bottom = axes[-1][0]
    tick = max(1, n_c // 30)
    bottom.set_xticks(range(0, n_c, tick))
    bottom.set_xticklabels(labels[::tick], rotation=45 if n_c > 12 else 0, fontsize=7,
                           ha="right" if n_c > 12 else "center")
    bottom.set_xlabel("step" if labels and labels[0].replace(".", "").isdigit() else "commit")
    fig.savefig(out, dpi=dpi)
    size = fig.get_size_inches() * dpi
    plt.close(fig)
    return img, (int(round(size[0])), int(round(size[1])))
