"""A run's history (docs/history.md): metadata on commits through every writer, selection by a
metric, the relative-change numbers behind the plot, the plot of a real (small) fine-tuning
run, and the report page opened in a real headless browser."""
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import corafs
from conftest import run_cli
from corafs.core import commitmeta, evolution
from corafs.errors import CorafsError, NotFound
from mountutil import mounted, needs_fuse, settled, wait_for


# -- metadata ---------------------------------------------------------------------------------------
def test_metadata_is_checked_and_kept_in_the_commit(repo, work):
    p = work / "a.bin"
    p.write_bytes(b"a")
    res = repo.commit("main", {"a.bin": str(p)}, meta={
        "step": 400, "loss": 0.123, "diverged": float("nan"), "note": "warmup",
        "lr": np.float32(3e-4)})
    c = repo.commit_obj(res.commit)
    assert c.meta == {"step": 400, "loss": 0.123, "diverged": "nan", "note": "warmup",
                      "lr": pytest.approx(3e-4)}
    assert repo.get_meta(res.commit)["meta"]["step"] == 400     # in the object: its id covers it
    assert repo.commit_obj(repo.log("main")[-1].id).meta == {}  # the first commit has none
    for bad in ({"1x": 1}, {"k": [1, 2]}, {"k": "x" * 300}, {"a b": 1}):
        with pytest.raises(CorafsError):
            repo.commit("main", {"b.bin": str(p)}, meta=bad)
    assert repo.head("main") == res.commit                      # refused before anything moved
    assert commitmeta.parse_pairs(["loss=0.5", "step=10", "tag=best", "ok=true"]) == \
        {"loss": 0.5, "step": 10, "tag": "best", "ok": True}


def test_cli_commit_log_show_and_tag_by_a_metric(fresh, work):
    repo, _mnt = fresh
    losses = [0.9, 0.4, float("nan"), 0.6]
    for i, loss in enumerate(losses):
        p = work / "m.bin"
        p.write_bytes(f"v{i}".encode())
        run_cli("commit", repo, p, "-m", f"step {i}", "--meta", f"step={i * 100}",
                "--meta", f"eval_loss={loss}")
    out = run_cli("log", repo, "--meta").stdout
    header = out.splitlines()[0].split()
    assert header[:4] == ["commit", "date", "step", "eval_loss"], header
    assert " 300 " in out and "nan" in out
    assert "Meta:   eval_loss=0.4  step=100" in run_cli("show", repo, "main~2").stdout
    out = run_cli("tag", repo, "best", "main", "--by", "eval_loss:min").stdout
    assert "eval_loss=0.4" in out                                # NaN never wins
    with corafs.Repository(str(repo)) as r:
        assert r.commit_obj(r.tags()["best"]).meta["step"] == 100
    assert run_cli("tag", repo, "best", "main~3", check=False).returncode != 0   # exists
    run_cli("tag", repo, "best", "main~3", "-f")               # moved in one step
    with corafs.Repository(str(repo)) as r:
        assert r.tags()["best"] == r.resolve("main~3") and len(r.reflog("tags/best")) == 2
    p = run_cli("tag", repo, "worst", "main", "--by", "eval_loss:max").stdout
    assert "eval_loss=0.9" in p
    bad = run_cli("tag", repo, "x", "main", "--by", "missing:min", check=False)
    assert bad.returncode != 0 and "missing" in bad.stderr
    bad = run_cli("commit", repo, work / "m.bin", "--meta", "nokey", check=False)
    assert bad.returncode != 0 and "KEY=VALUE" in bad.stderr


@needs_fuse
@pytest.mark.mount
def test_the_mount_carries_metadata_set_on_a_branch_and_shows_it(fresh, work):
    repo, mnt = fresh
    with mounted(repo, mnt, "--commit-delay", "0.1") as m:
        os.setxattr(f"{m}/main", "user.corafs.meta.loss", b"0.25")
        os.setxattr(f"{m}/main", "user.corafs.meta.step", b"30")
        with pytest.raises(OSError):                        # only on a branch's top directory
            os.setxattr(f"{m}/@tags", "user.corafs.meta.loss", b"1")
        assert os.getxattr(f"{m}/main", "user.corafs.meta.loss") == b"0.25"
        with open(f"{m}/main/ckpt.bin", "wb") as f:
            f.write(b"weights")
        assert wait_for(lambda: settled(repo) and len(_log(repo)) == 2, timeout=20)
        cid = _log(repo)[0].id
        assert wait_for(lambda: os.path.isdir(f"{m}/@commits/{cid}"))
        assert os.getxattr(f"{m}/@commits/{cid}", "user.corafs.meta.step") == b"30"
    c = _log(repo)[0]
    assert c.meta == {"loss": 0.25, "step": 30}


def _log(repo):
    with corafs.Repository(str(repo)) as r:
        return r.log("main")


# -- the numbers behind the plot ------------------------------------------------------------------
def test_relative_change_per_tensor_and_commit(repo, work):
    import safetensors.numpy
    rng = np.random.default_rng(0)
    w = {"layers.0.w": rng.standard_normal(50_000).astype(np.float32),
         "layers.1.w": rng.standard_normal(50_000).astype(np.float32),
         "frozen.w": rng.standard_normal(1000).astype(np.float32)}
    versions = [dict(w)]
    for k in range(3):
        v = dict(versions[-1])
        v["layers.0.w"] = v["layers.0.w"] * (1 + 0.01 * (k + 1))
        v["layers.1.w"] = v["layers.1.w"] + rng.standard_normal(50_000).astype(np.float32) * 0.1
        versions.append(v)
    for k, v in enumerate(versions):
        p = work / f"v{k}.safetensors"
        safetensors.numpy.save_file(v, str(p))
        repo.commit("main", {"model.safetensors": str(p)}, meta={"step": k})
    ev = evolution.compute(repo, "main")
    assert ev.path == "model.safetensors" and len(ev.commits) == 4      # not the empty first
    assert ev.change.shape == (3, 4) and ev.computed_pairs == 6
    row = {n: i for i, n in enumerate(ev.tensors)}
    assert np.isnan(ev.change[:, 0]).all()                   # no parent holding the file
    assert (ev.change[row["frozen.w"], 1:] == 0).all()       # same tensor id: no decode
    for k in range(1, 4):
        a, b = versions[k - 1]["layers.1.w"], versions[k]["layers.1.w"]
        want = np.linalg.norm((b - a).astype(np.float64)) / np.linalg.norm(a.astype(np.float64))
        assert math.isclose(ev.change[row["layers.1.w"], k], want, rel_tol=1e-6)
        assert math.isclose(ev.change[row["layers.0.w"], k], 0.01 * k,     # w *= 1 + k/100
                            rel_tol=1e-4)
    again = evolution.compute(repo, "main")                  # cached by tensor ids
    assert again.decoded_bytes == 0 and again.cached_pairs == 6
    np.testing.assert_array_equal(np.nan_to_num(again.change, nan=-1),
                                  np.nan_to_num(ev.change, nan=-1))
    assert [c.id for c in repo.commit_range("main~2..main")] == [c.id for c in ev.commits[2:]]
    assert evolution.layer_of("model.layers.3.mlp.up.weight") == "model.layers.3"
    assert evolution.layer_of("lm_head.weight") == "lm_head"
    with pytest.raises(NotFound):
        evolution.compute(repo, "main", "absent.safetensors")


# -- a real fine-tuning run, plotted ----------------------------------------------------------------
def _fine_tune(repo, steps=6):
    """A small MLP trained for real (AdamW on a loss), its state dict committed every step
    with what the loop logged."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    model[0].requires_grad_(False)                          # a frozen first layer
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(256, 32), torch.randint(0, 4, (256,))
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        repo.save_state_dict("main", "model.safetensors", model.state_dict(),
                             meta={"step": step * 10, "loss": loss.item(),
                                   "eval_loss": loss.item() * 1.1})


@pytest.mark.smoke
def test_plot_of_a_real_fine_tuning_run(repo, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from corafs.viz import plot
    import matplotlib.image
    _fine_tune(repo)
    ev = evolution.compute(repo, "main")
    out = str(tmp_path / "run.png")
    img, (w, h) = plot.render(ev, out, ["loss", "eval_loss"])
    assert img.get_array().shape == (4, 6)                   # tensors x one column per commit
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (h, w) and w >= 600 and h >= 500
    assert pixels[..., :3].std() > 0.05                      # not a blank picture
    frozen = ev.tensors.index("0.weight")
    assert (ev.change[frozen, 1:] == 0).all() and (ev.change[ev.tensors.index("2.weight"),
                                                             1:] > 0).all()
    assert plot.axis_labels(ev) == ["10", "20", "30", "40", "50", "60"]
    svg = tmp_path / "run.svg"
    p = run_cli("plot", repo.path, "-o", svg, "--meta", "loss")
    assert "4 tensors of model.safetensors x 6 commits" in p.stdout
    assert "from the cache" in p.stdout and svg.read_text().lstrip().startswith("<?xml")
    bad = run_cli("plot", repo.path, "-o", tmp_path / "x.jpg", check=False)
    assert bad.returncode != 0 and ".png or .svg" in bad.stderr


# -- the report page, in a real browser -------------------------------------------------------------
def _browser():
    for name in ("chromium-headless-shell", "chromium", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("no headless browser: make test installs chromium-headless-shell")
    pytest.skip("no headless browser installed (make test installs chromium-headless-shell)")


def test_report_renders_in_a_headless_browser(repo, tmp_path):
    pytest.importorskip("matplotlib")
    browser = _browser()
    _fine_tune(repo)
    repo.create_branch("exp")
    repo.create_tag("v1", "main~2")
    out = tmp_path / "report"
    p = run_cli("report", repo.path, "-o", out)
    assert "7 commits" in p.stdout
    page = (out / "index.html").as_uri()
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-ready="yes"' in dom, dom[:500]
    assert 'data-images-loaded="1"' in dom and 'data-images="1"' in dom
    with corafs.Repository(repo.path) as r:
        ids = [c.id for c in r.log("main")]
    assert dom.count("class=\"commit\"") == len(ids) == 7
    assert all(f'data-commit="{cid}"' in dom for cid in ids)
    assert "[exp]" in dom and "tag: v1" in dom                  # the branch graph's labels
    assert "2.weight" in dom and "of 4 tensors changed" in dom  # per commit tensor diffs
    assert ".safetensors" in dom and "id=\"storage\"" in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1200,1600", page],
                   capture_output=True, timeout=120)
    import matplotlib.image
    px = matplotlib.image.imread(str(shot))
    assert px.shape[:2] == (1600, 1200) and px[..., :3].std() > 0.05
