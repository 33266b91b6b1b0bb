"""``corafs report REPO -o DIR``: one static HTML page of a repository's history, opened from
disk (no server, no network, nothing fetched): the branch graph, the commits with their
metadata and sizes, the plot of the run (when matplotlib is installed), per commit the
tensor-level change against its parent, and storage statistics per kind of file.

The page is ``DIR/index.html`` with its pictures beside it (``evolution.png``); everything
else (styles, the graph as inline SVG, a small script that marks the page once its pictures
have loaded) is inside the file."""
from __future__ import annotations

import datetime
import html
import math
import os
from typing import Callable, Optional

from ..core import evolution, stats as statsmod
from ..errors import CorafsError, NotFound

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top} th{background:#f6f6f6} td.n{text-align:right;
font-variant-numeric:tabular-nums} code{font-size:12px} details{margin:2px 0}
.note{color:#666} img{max-width:100%;border:1px solid #eee}
#commits td{white-space:nowrap} #commits td.msg{max-width:480px;overflow:hidden;
text-overflow:ellipsis} .scroll{overflow-x:auto}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
  document.body.setAttribute('data-ready', 'yes');
});
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M")


def _val(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write(repo, out: str, spec: Optional[str] = None, path: Optional[str] = None,
          progress: Optional[Callable] = None) -> str:
    """Write the page; returns a one-line summary."""
    os.makedirs(out, exist_ok=True)
    commits = repo.commit_range(spec)
    if not commits:
        raise NotFound("commits in", spec or repo.default_branch)
    try:
        ev = evolution.compute(repo, spec, path, progress=progress)
    except NotFound:
        ev = None                         # no checkpoint file in the range: no plot, no diffs
    plot_note = ""
    if ev is not None:
        try:
            from . import plot
            plot.render(ev, os.path.join(out, "evolution.png"))
        except CorafsError as e:          # matplotlib missing: the page says so
            plot_note = str(e)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<title>corafs report: {_e(repo.url)}</title><style>{_CSS}</style>"
             f"<script>{_SCRIPT}</script></head><body>",
             f"<h1>{_e(repo.url)}</h1>",
             f"<p class='note'>{len(commits)} commits of <code>{_e(spec or repo.default_branch)}"
             f"</code>; written {_e(_when(int(datetime.datetime.now().timestamp() * 1e9)))} by "
             f"corafs report</p>"]
    parts += ["<h2>Branches</h2>", "<div class='scroll'>", _graph(repo), "</div>"]
    parts += ["<h2>Commits</h2>", "<div class='scroll'>", _commit_table(repo, commits),
              "</div>"]
    parts.append("<h2>How the weights moved</h2>")
    if ev is None:
        parts.append("<p class='note'>no checkpoint file in these commits</p>")
    elif plot_note:
        parts.append(f"<p class='note'>{_e(plot_note)}</p>")
    else:
        parts.append(f"<p>Relative change of each tensor of <code>{_e(ev.path)}</code> against "
                     f"the commit before, with the metrics the run logged.</p>"
                     f"<img src='evolution.png' alt='relative change per tensor and commit'>")
    parts += ["<h2>Changes commit by commit</h2>", _diffs(repo, commits, ev)]
    parts += ["<h2>Storage</h2>", _storage(repo)]
    parts.append("</body></html>")
    with open(os.path.join(out, "index.html"), "w") as f:
        f.write("\n".join(parts))
    return (f"{len(commits)} commits" + (f", {len(ev.tensors)} tensors of {ev.path} plotted"
                                         if ev is not None and not plot_note else ""))


def _graph(repo) -> str:
    """Every branch as a lane: its first-parent commits newest first (top), lines to parents
    (merges cross lanes), branch and tag names at their commits. Inline SVG."""
    branches = sorted(repo.branches().items(), key=lambda kv: (kv[0] != repo.default_branch,
                                                               kv[0]))
    lane: dict[str, int] = {}
    for i, (_name, head) in enumerate(branches):
        for c in reversed(repo.first_parent_history(head)):
            lane.setdefault(c.id, i)
    objs = {cid: repo.commit_obj(cid) for cid in lane}
    order = sorted(objs.values(), key=lambda c: (c.time_ns, c.id), reverse=True)
    row = {c.id: k for k, c in enumerate(order)}
    labels: dict[str, list[str]] = {}
    for name, head in branches:
        labels.setdefault(head, []).append(name)
    for name, cid in repo.tags().items():
        labels.setdefault(cid, []).append(f"tag: {name}")
    dx, dy, x0, y0 = 18, 22, 14, 14
    width = x0 + dx * max(1, len(branches)) + 520
    height = y0 + dy * len(order) + 10
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"font-size='12' font-family='monospace' role='img' aria-label='branch graph'>"]
    for c in order:
        x, y = x0 + dx * lane[c.id], y0 + dy * row[c.id]
        for p in c.parents:
            if p in row:
                svg.append(f"<line x1='{x}' y1='{y}' x2='{x0 + dx * lane[p]}' "
                           f"y2='{y0 + dy * row[p]}' stroke='#999' stroke-width='1.5'/>")
    tx = x0 + dx * max(1, len(branches)) + 6
    for c in order:
        x, y = x0 + dx * lane[c.id], y0 + dy * row[c.id]
        col = colours[lane[c.id] % len(colours)]
        svg.append(f"<circle cx='{x}' cy='{y}' r='5' fill='{col}'><title>{_e(c.id)}</title>"
                   f"</circle>")
        names = "".join(f" [{n}]" for n in labels.get(c.id, []))
        msg = (c.message.splitlines()[0] if c.message else "")[:60]
        svg.append(f"<text x='{tx}' y='{y + 4}'>{_e(c.id[:10])}{_e(names)} {_e(msg)}</text>")
    svg.append("</svg>")
    return "".join(svg)


def _tree_size(repo, cid: str) -> tuple[int, int]:
    n = size = 0
    for _p, e in repo.walk(cid):
        if e["kind"] == "file":
            n += 1
            size += e["size"]
    return n, size


def _commit_table(repo, commits) -> str:
    keys = sorted({k for c in commits for k in c.meta},
                  key=lambda k: (k != "step", k != "epoch", k))
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = [f"<table id='commits'><tr><th>commit</th><th>date</th><th>author</th>"
            f"<th>files</th><th>size</th>{head}<th>message</th></tr>"]
    for c in reversed(commits):
        n, size = _tree_size(repo, c.id)
        vals = "".join(f"<td class='n'>{_e(_val(c.meta[k])) if k in c.meta else ''}</td>"
                       for k in keys)
        rows.append(f"<tr class='commit' data-commit='{_e(c.id)}'><td><code title='{_e(c.id)}'>"
                    f"{_e(c.id[:12])}</code></td><td>{_e(_when(c.time_ns))}</td>"
                    f"<td>{_e(c.author)}</td><td class='n'>{n}</td><td class='n'>"
                    f"{_e(_size(size))}</td>{vals}<td class='msg' title='{_e(c.message)}'>"
                    f"{_e(c.message.splitlines()[0] if c.message else '')}"
                    f"</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _diffs(repo, commits, ev) -> str:
    """Per commit: files added, removed, changed against its first parent; for the followed
    checkpoint, its tensors by relative change (largest first)."""
    col = {c.id: k for k, c in enumerate(ev.commits)} if ev is not None else {}
    out = []
    for c in reversed(commits):
        if not c.parents:
            continue
        changes = repo.diff(c.parents[0], c.id, tensors=False)
        summary = ", ".join(f"{fc.status} {fc.path}" for fc in changes[:6]) + \
            (f", ... ({len(changes)} files)" if len(changes) > 6 else "") or "no file changed"
        body = []
        if ev is not None and c.id in col:
            k = col[c.id]
            ranked = sorted(((ev.change[i, k], name) for i, name in enumerate(ev.tensors)
                             if not math.isnan(ev.change[i, k])), reverse=True)
            if ranked:
                moved = sum(1 for r, _n in ranked if r > 0)
                body.append(f"<p>{_e(ev.path)}: {moved} of {len(ranked)} tensors changed</p>"
                            "<table class='tensors'><tr><th>tensor</th><th>‖Δw‖/‖w‖</th></tr>")
                for r, name in ranked:
                    body.append(f"<tr><td><code>{_e(name)}</code></td><td class='n'>"
                                f"{r:.3g}</td></tr>")
                body.append("</table>")
        out.append(f"<details class='diff' data-commit='{_e(c.id)}'><summary><code>"
                   f"{_e(c.id[:12])}</code> {_e(summary)}</summary>{''.join(body)}</details>")
    return "".join(out) or "<p class='note'>no commit with a parent</p>"


def _storage(repo) -> str:
    st = repo.stats()
    kinds = statsmod.by_kind(repo)
    rows = ["<table id='storage'><tr><th>kind</th><th>versions</th><th>logical</th>"
            "<th>stored</th><th>ratio</th></tr>"]
    for kind, k in sorted(kinds.items(), key=lambda kv: -kv[1]["logical"]):
        ratio = k["logical"] / k["stored"] if k["stored"] else float("inf")
        rows.append(f"<tr><td>{_e(kind)}</td><td class='n'>{k['versions']}</td><td class='n'>"
                    f"{_e(_size(k['logical']))}</td><td class='n'>{_e(_size(k['stored']))}"
                    f"</td><td class='n'>{ratio:.2f}x</td></tr>")
    rows.append(f"<tr><th>all</th><th class='n'>{st.file_versions}</th><th class='n'>"
                f"{_e(_size(st.logical_bytes))}</th><th class='n'>"
                f"{_e(_size(st.stored_bytes + st.meta_bytes))}</th><th class='n'>"
                f"{st.logical_bytes / max(1, st.stored_bytes + st.meta_bytes):.2f}x</th></tr>")
    rows.append("</table>")
    rows.append(f"<p class='note'>on disk {_e(_size(st.disk_bytes))} ({st.ratio:.2f}x of the "
                f"logical size); {st.keyframes} keyframe and {st.deltas} delta blocks, delta "
                f"chains at most {st.max_depth} deep ({st.head_max_depth} for branch heads)</p>")
    return "".join(rows)


__all__ = ["write"]
