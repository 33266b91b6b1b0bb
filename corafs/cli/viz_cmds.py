"""``corafs plot`` and ``corafs report``: a run's history as a picture and as a page."""
from __future__ import annotations

import os

from ..core import evolution
from . import fmt
from .common import open_repo, progress


def add(cmd) -> None:
    sp = cmd("plot", cmd_plot, "draw how a run's tensors changed commit by commit, above the "
                               "metrics it logged (needs matplotlib: pip install 'corafs[plot]')")
    sp.add_argument("repo")
    sp.add_argument("range", nargs="?", metavar="RANGE",
                    help="a branch (all its commits) or A..B (default: the default branch)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE",
                    help="the picture: .png or .svg")
    sp.add_argument("--file", metavar="PATH",
                    help="the checkpoint to follow (default: the largest checkpoint file)")
    sp.add_argument("--meta", metavar="KEYS",
                    help="metrics to plot below, comma-separated (default: every numeric key "
                         "the commits carry; '' for none)")

    sp = cmd("report", cmd_report, "write a static HTML page of a repository's history: "
                                   "branch graph, commits with metadata, plots, tensor diffs, "
                                   "storage")
    sp.add_argument("repo")
    sp.add_argument("range", nargs="?", metavar="RANGE",
                    help="the commits to plot and diff (default: the default branch)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR")
    sp.add_argument("--file", metavar="PATH", help="the checkpoint to follow in the plot")


def _keys(spec):
    if spec is None:
        return None
    return [k for k in spec.split(",") if k]


def cmd_plot(a):
    from ..viz import plot
    with open_repo(a.repo) as repo:
        ev = evolution.compute(repo, a.range, a.file,
                               progress=lambda total: progress(total, "decode"))
        _img, (w, h) = plot.render(ev, a.output, _keys(a.meta))
        print(f"{a.output}: {len(ev.tensors)} tensors of {ev.path} x {len(ev.commits)} commits "
              f"({w}x{h} px); decoded {fmt.size(ev.decoded_bytes)} "
              f"({ev.computed_pairs} changed tensors computed, {ev.cached_pairs} from the cache)")


def cmd_report(a):
    from ..viz import report
    with open_repo(a.repo) as repo:
        out = report.write(repo, a.output, a.range, a.file,
                           progress=lambda total: progress(total, "decode"))
        print(f"{os.path.join(a.output, 'index.html')}: {out}")
