"""Repositories in an S3-compatible store, against real S3 servers on 127.0.0.1 that these tests
start themselves (moto_server, and Ceph's radosgw: ``s3servers``): HTTP all the way, no mocks."""
import errno
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import safetensors.numpy

from conftest import sha256_bytes, sha256_file
import s3servers
from mountutil import mounted, needs_fuse, wait_for
from s3servers import SECRET

pytestmark = pytest.mark.skipif(shutil.which("moto_server") is None,
                                reason="moto_server (moto[server]) is not installed")


@pytest.fixture(scope="module")
def moto():
    srv = s3servers.start_moto()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ceph():
    missing = s3servers.ceph_missing()
    if missing:
        if os.environ.get("CORAFS_REQUIRE_CEPH") == "1":
            pytest.fail(f"Ceph is required here but {', '.join(missing)} is missing "
                        "(make test installs ceph-mon ceph-osd radosgw ceph-common)")
        pytest.skip(f"Ceph radosgw is not installed ({', '.join(missing)} missing)")
    srv = s3servers.start_ceph()
    yield srv
    srv.stop()


@pytest.fixture(scope="module", params=["moto", "ceph"])
def server(request):
    """Each S3 test runs against moto_server and against Ceph's radosgw."""
    return request.getfixturevalue(request.param)


def _machine(srv, tmp_path, monkeypatch):
    """Environment of a machine using the server: credentials, endpoint, its own cache; and a
    new bucket's repository URL."""
    env = {"AWS_ACCESS_KEY_ID": srv.access_key, "AWS_SECRET_ACCESS_KEY": srv.secret_key,
           "AWS_DEFAULT_REGION": "us-east-1", "CORAFS_S3_ENDPOINT_URL": srv.url,
           "CORAFS_CACHE_DIR": str(tmp_path / "cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import boto3
    # boto3's default session keeps the credentials it first resolved: start over
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    bucket = f"b{os.urandom(6).hex()}"
    boto3.client("s3", endpoint_url=srv.url).create_bucket(Bucket=bucket)
    return env, f"s3://{bucket}/repo"


@pytest.fixture
def s3env(server, tmp_path, monkeypatch):
    return _machine(server, tmp_path, monkeypatch)


@pytest.fixture
def moto_env(moto, tmp_path, monkeypatch):
    """For tests that put a proxy of their own in front of the service (moto checks no
    signatures, so a proxy may rewrite what it forwards)."""
    return _machine(moto, tmp_path, monkeypatch)


def cli(env, *args, check=True):
    p = subprocess.run([sys.executable, "-m", "corafs", *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, **env})
    assert SECRET not in p.stdout + p.stderr
    if check and p.returncode != 0:
        raise AssertionError(f"corafs {args} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def _model(path, seed, base=None):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(1 << 18, dtype=np.float32) if base is None else \
        base + rng.standard_normal(base.size, dtype=np.float32) * 1e-3
    safetensors.numpy.save_file({"w": w.reshape(-1, 256), "b": w[:256].copy()}, str(path))
    return w


@pytest.mark.smoke
def test_init_commit_export_byte_exact_through_s3(s3env, work, tmp_path):
    env, url = s3env
    cli(env, "init", url)
    shas, w = [], None
    for v in range(3):
        p = work / "model.safetensors"
        w = _model(p, v, w)
        cli(env, "commit", url, p, "-m", f"v{v}")
        shas.append(sha256_file(p))
    # another machine (its own cache) sees the same history, byte-exact
    other = {**env, "CORAFS_CACHE_DIR": str(tmp_path / "cache-other")}
    for i, sha in enumerate(reversed(shas)):
        out = tmp_path / f"out{i}"
        cli(other, "export", url, f"main~{i}:model.safetensors", out)
        assert sha256_file(out) == sha
    assert "repository is consistent" in cli(other, "fsck", url).stdout
    assert "deltas" in cli(other, "stats", url).stdout
    p = cli(env, "init", url, check=False)
    assert p.returncode != 0 and "already exists" in p.stderr


@pytest.mark.smoke
def test_racing_commits_from_two_machines_lose_nothing(s3env, work, tmp_path):
    env, url = s3env
    cli(env, "init", url)
    procs = []
    for m in range(2):
        menv = {**os.environ, **env, "CORAFS_CACHE_DIR": str(tmp_path / f"cache-m{m}")}
        files = []
        for i in range(4):
            p = work / f"m{m}-f{i}.txt"
            p.write_text(f"machine {m} file {i}\n" * 100)
            files.append(str(p))
        script = ("import sys; from corafs import Repository\n"
                  "r = Repository(sys.argv[1])\n"
                  "for f in sys.argv[2:]:\n"
                  "    r.commit('main', {f.rsplit('/', 1)[1]: f})\n")
        procs.append(subprocess.Popen([sys.executable, "-c", script, url, *files], env=menv))
    for p in procs:
        assert p.wait() == 0
    from corafs import Repository
    with Repository(url) as r:
        names = set(r.listdir(r.head("main")))
        assert names == {f"m{m}-f{i}.txt" for m in range(2) for i in range(4)}
        assert len(r.log("main")) == 9
        for name in names:
            assert r.read_file(f"main:{name}") == (work / name).read_bytes()


def test_api_and_a_missing_object_fails_only_its_file(s3env, work):
    env, url = s3env
    from corafs import Repository
    from corafs.errors import CorruptObject
    with Repository.init(url) as r:
        _model(work / "a.safetensors", 1)
        (work / "b.safetensors").write_bytes(os.urandom(3 << 20))   # shares nothing with a
        r.commit("main", {"a.safetensors": str(work / "a.safetensors")})
        r.commit("main", {"b.safetensors": str(work / "b.safetensors")})
        e = r.entry(r.head("main"), "a.safetensors")
        oid = r.get_meta(e["id"])["tensors"][0]["id"]
        block = r.tensor_manifest(oid)["blocks"][0][0]
        pack = r.store.location(block)[0]
    import boto3
    bucket = url[5:].split("/")[0]
    boto3.client("s3", endpoint_url=env["CORAFS_S3_ENDPOINT_URL"]).delete_object(
        Bucket=bucket, Key=f"repo/packs/{pack}.pack")
    with Repository(url) as r:
        with pytest.raises(CorruptObject):
            r.read_file("main:a.safetensors")
        assert r.read_file("main:b.safetensors") == (work / "b.safetensors").read_bytes()


class _Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the real server (a service in front of its storage: stopping and starting
    it is a server restart that keeps the data)."""
    target = None
    drop = ("host",)
    protocol_version = "HTTP/1.1"

    def _forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.drop}
        c = http.client.HTTPConnection(*self.target)
        c.request(self.command, self.path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, *a):
        pass


class _DroppingProxy(_Proxy):
    """Drops conditional headers, as broken services do."""
    drop = ("if-match", "if-none-match", "host")


def _serve(handler, port=0):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_server_restarted_mid_push_push_resumes(moto_env, moto, work, tmp_path):
    env, url = moto_env
    host, port = moto.url[len("http://"):].split(":")
    _Proxy.target = (host, int(port))
    proxy = _serve(_Proxy)
    pport = proxy.server_port
    penv = {**env, "CORAFS_S3_ENDPOINT_URL": f"http://127.0.0.1:{pport}"}
    local = tmp_path / "local"
    cli(env, "init", local)
    big = work / "big.safetensors"
    safetensors.numpy.save_file({f"t{i}": np.random.default_rng(i).standard_normal(
        1 << 20, dtype=np.float32) for i in range(24)}, str(big))
    cli(env, "commit", local, big)
    proc = subprocess.Popen([sys.executable, "-m", "corafs", "push", str(local), url],
                            env={**os.environ, **penv}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    from corafs import Repository

    def a_pack_landed():
        from corafs.errors import NotARepository
        try:
            with Repository(url) as r:
                return r.store.stored_bytes() > 0
        except NotARepository:
            return False
    assert wait_for(a_pack_landed, timeout=60, interval=0.05)
    proxy.shutdown()                 # the service goes away mid-push...
    proxy.server_close()
    out, err = proc.communicate(timeout=300)
    assert SECRET not in out + err
    proxy = _serve(_Proxy, pport)    # ...and comes back, its data intact
    try:
        with Repository(url) as r:
            partial = r.store.stored_bytes()
        p = cli(penv, "push", local, url)
        assert "main:" in p.stdout or "up to date" in p.stdout
        with Repository(url) as r, Repository(str(local)) as lr:
            assert r.head("main") == lr.head("main")
            assert r.read_file("main:big.safetensors") == big.read_bytes()
            assert r.store.stored_bytes() < partial + lr.store.stored_bytes()
        assert "consistent" in cli(penv, "fsck", url).stdout
        assert "consistent" in cli(env, "fsck", local).stdout
    finally:
        proxy.shutdown()


def test_a_service_without_conditional_writes_is_refused_at_init(moto_env, moto):
    env, url = moto_env
    host, port = moto.url[len("http://"):].split(":")
    _DroppingProxy.target = (host, int(port))
    proxy = _serve(_DroppingProxy)
    try:
        penv = {**env, "CORAFS_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_port}"}
        p = cli(penv, "init", url, check=False)
        assert p.returncode != 0
        assert "does not honour conditional writes" in p.stderr and "If-None-Match" in p.stderr
        # nothing was created: the real service still has no repository there
        assert cli(env, "log", url, check=False).returncode != 0
    finally:
        proxy.shutdown()


def test_errors_name_the_key_never_the_credentials(s3env):
    env, url = s3env
    p = cli(env, "init", "s3://no-such-bucket-corafs/x", check=False)
    assert p.returncode != 0 and "no-such-bucket-corafs" in p.stderr
    p = cli(env, "log", url, check=False)
    assert p.returncode != 0 and "not a corafs repository" in p.stderr


@needs_fuse
@pytest.mark.mount
def test_mount_on_s3_loads_with_torch_and_commits_writes(s3env, work, tmp_path):
    import torch
    from safetensors import safe_open
    env, url = s3env
    cli(env, "init", url)
    sd = {"layer.weight": torch.randn(256, 256), "layer.bias": torch.randn(256)}
    torch.save(sd, work / "model.pth")
    safetensors.numpy.save_file({k: v.numpy() for k, v in sd.items()},
                                str(work / "model.safetensors"))
    cli(env, "commit", url, work / "model.pth", work / "model.safetensors")
    (work / "lost.bin").write_bytes(os.urandom(1 << 20))
    cli(env, "commit", url, work / "lost.bin")
    from corafs import Repository
    with Repository(url) as r:                  # the pack holding lost.bin's data only
        e = r.entry(r.head("main"), "lost.bin")
        lost_pack = r.store.location(r.get_meta(e["id"])["extents"]["obj"][0])[0]
    import boto3
    boto3.client("s3", endpoint_url=env["CORAFS_S3_ENDPOINT_URL"]).delete_object(
        Bucket=url[5:].split("/")[0], Key=f"repo/packs/{lost_pack}.pack")
    mnt = tmp_path / "mnt"
    with mounted(url, mnt):
        # an object deleted on the server: EIO for its file, the others read on
        with pytest.raises(OSError) as err:
            (mnt / "main" / "lost.bin").read_bytes()
        assert err.value.errno == errno.EIO
        got = torch.load(mnt / "main" / "model.pth", weights_only=True)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        got = torch.load(mnt / "main" / "model.pth", weights_only=True, mmap=True)
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        with safe_open(str(mnt / "main" / "model.safetensors"), "pt") as f:
            assert torch.equal(f.get_tensor("layer.bias"), sd["layer.bias"])
        data = os.urandom(1 << 20)
        (mnt / "main" / "blob.bin").write_bytes(data)
        assert wait_for(lambda: "nothing staged" in cli(env, "status", url).stdout,
                        timeout=60)
        assert sha256_file(mnt / "main" / "blob.bin") == sha256_bytes(data)
    from corafs import Repository
    with Repository(url) as r:
        assert r.read_file("main:blob.bin") == data
    log = os.path.join(env["CORAFS_CACHE_DIR"], "s3")
    for root, _d, files in os.walk(log):
        for f in files:
            if f.endswith(".log"):
                assert SECRET not in open(os.path.join(root, f), errors="replace").read()


def test_push_clone_pull_through_s3(s3env, work, tmp_path):
    """Only what the other side lacks travels, as stored; an interrupted push resumes."""
    env, url = s3env
    local = tmp_path / "local"
    cli(env, "init", local)
    w = None
    for v in range(3):
        p = work / "model.safetensors"
        w = _model(p, v, w)
        cli(env, "commit", local, p, "-m", f"v{v}")
    cli(env, "remote", local, "add", "origin", url)
    objects = sum(os.path.getsize(os.path.join(local, "objects", f))
                  for f in os.listdir(local / "objects") if f.endswith((".h5", ".idx")))
    # a push killed midway leaves complete packs; the next one sends the rest
    big = work / "big.safetensors"
    _model(big, 50)
    safetensors.numpy.save_file({f"t{i}": np.random.default_rng(i).standard_normal(
        1 << 20, dtype=np.float32) for i in range(24)}, str(big))
    cli(env, "commit", local, big)
    from corafs import Repository
    from corafs.core import remote

    class Interrupted(Exception):
        pass
    sent_before = [0]

    def cut(n):          # the connection dies after 70 MiB: two 32 MiB packs are complete
        sent_before[0] += n
        if sent_before[0] > 70 << 20:
            raise Interrupted()
    with Repository(str(local)) as lr:
        with pytest.raises(Interrupted):
            remote.push(lr, url, on_progress=cut)
        total = len(list(lr.store.ids()))
    with Repository(url) as rr:
        assert rr.store.stored_bytes() >= 60 << 20       # what was sealed stayed
        assert "main" not in rr.branches()               # no ref moved
    p = cli(env, "push", local, "origin")
    assert "main:" in p.stdout
    sent = int(p.stdout.split(" object(s)")[0].split()[-1])
    assert 0 < sent < total                              # resumed, not restarted
    assert cli(env, "push", local, "origin").stdout.count("up to date") == 1
    with Repository(str(local)) as lr, Repository(url) as rr:
        assert rr.head("main") == lr.head("main")
        assert rr.store.stored_bytes() <= objects + os.path.getsize(big)
    assert "consistent" in cli(env, "fsck", url).stdout
    # clone elsewhere, commit there, push back; pull brings it home
    other = {**env, "CORAFS_CACHE_DIR": str(tmp_path / "cache-b")}
    clone = tmp_path / "clone"
    cli(other, "clone", url, clone)
    for i in range(4):
        assert sha256_bytes(Repository(str(clone)).read_file(f"main~{i}:model.safetensors")
                            if i else (work / "model.safetensors").read_bytes()) == \
            sha256_bytes(Repository(str(local)).read_file(f"main~{i}:model.safetensors"))
    w2 = _model(work / "model.safetensors", 99, w)
    cli(other, "commit", clone, work / "model.safetensors", "-m", "from the clone")
    cli(other, "push", clone, "origin")
    p = cli(env, "pull", local, "origin")
    assert "->" in p.stdout
    with Repository(str(local)) as lr:
        assert lr.log("main")[0].message == "from the clone"
        assert lr.read_file("main:model.safetensors") == (work / "model.safetensors").read_bytes()
    # diverged histories: refused without --force, nothing overwritten
    cli(env, "commit", local, big, "--to", "x")
    cli(other, "commit", clone, big, "--to", "y")
    cli(other, "push", clone, "origin")
    p = cli(env, "push", local, "origin", check=False)
    assert p.returncode != 0 and "diverged" in p.stderr
    p = cli(env, "pull", local, "origin", "main", "--into", "theirs")
    assert "theirs" in p.stdout
    assert "consistent" in cli(env, "fsck", local).stdout
    del w2


def test_disk_cache_serves_warm_reads_and_stays_bounded(s3env, work, tmp_path, monkeypatch):
    env, url = s3env
    from corafs import Repository
    _model(work / "a.safetensors", 7)
    with Repository.init(url) as r:
        r.commit("main", {"a.safetensors": str(work / "a.safetensors")})
        want = r.read_file("main:a.safetensors")          # fetched: now on this disk
        packs = {r.store.location(o)[0] for o in r.store.ids()}
    import boto3
    bucket = url[5:].split("/")[0]
    s3 = boto3.client("s3", endpoint_url=env["CORAFS_S3_ENDPOINT_URL"])
    # the packs' data is gone from the server: a new process still reads from this machine
    for pack in packs:
        s3.put_object(Bucket=bucket, Key=f"repo/packs/{pack}.pack", Body=b"")
    with Repository(url) as r:
        assert r.read_file("main:a.safetensors") == want
    # another machine (empty cache) cannot, and says which object
    monkeypatch.setenv("CORAFS_CACHE_DIR", str(tmp_path / "cold"))
    from corafs.errors import CorruptObject
    with Repository(url) as r, pytest.raises(CorruptObject):
        r.read_file("main:a.safetensors")
    # bounded: a 256 KiB cache holds at most that (plus what one object adds)
    monkeypatch.setenv("CORAFS_CACHE_DIR", str(tmp_path / "small"))
    monkeypatch.setenv("CORAFS_CACHE_SIZE", "256K")
    url2 = url + "2"
    with Repository.init(url2) as r:
        r.commit("main", {"a.safetensors": str(work / "a.safetensors")})
    with Repository(url2) as r:
        assert r.read_file("main:a.safetensors") == want
        root = r.store.disk.root
    held = sum(os.path.getsize(os.path.join(d, f)) for d, _s, fs in os.walk(root) for f in fs)
    assert held <= (256 << 10) + (1 << 20) + (4 << 20)


def test_gc_on_s3_frees_a_deleted_branch_in_two_phases(s3env, work):
    env, url = s3env
    from corafs import Repository
    shas, w = {}, None
    with Repository.init(url) as r:
        for v in range(2):
            p = work / "model.safetensors"
            w = _model(p, v, w)
            shas[r.commit("main", {"model.safetensors": str(p)}).commit] = sha256_file(p)
        r.create_branch("exp")
        big = work / "exp.safetensors"
        safetensors.numpy.save_file({"x": np.random.default_rng(5).standard_normal(
            6 << 20, dtype=np.float32)}, str(big))                    # 24 MiB only exp holds
        before = r.store.stored_bytes()
        r.commit("exp", {"exp.safetensors": str(big)})
        exp_bytes = r.store.stored_bytes() - before
        r.delete_branch("exp")
    first = cli(env, "gc", url, "--grace", "0", "--expire-reflog", "now").stdout
    with Repository(url) as r:
        assert r.store.gc_records()                  # phase one: scheduled, not deleted yet
        scheduled = {p for rec in r.store.gc_records() for p in rec["packs"]}
        # a writer now counts the scheduled packs' objects as absent: it stores them again
        doomed_obj = next(o for o in r.store.ids() if r.store.location(o)[0] in scheduled)
        assert not r.store.has(doomed_obj)
    cli(env, "gc", url, "--grace", "0", "--expire-reflog", "now")   # phase two
    with Repository(url) as r:
        assert not r.store.gc_records()
        freed = before + exp_bytes - r.store.stored_bytes()
        assert freed >= 0.95 * exp_bytes, (freed, exp_bytes, first)
        for cid, sha in shas.items():
            assert sha256_bytes(r.read_file(f"{cid}:model.safetensors")) == sha
    assert "consistent" in cli(env, "fsck", url).stdout


def test_head_first_on_s3_from_two_machines(s3env, work, tmp_path):
    """Both machines commit and re-encode at once: the lease across machines keeps chains
    sound; heads are keyframes, history reverse deltas, every version exact."""
    env, url = s3env
    cli(env, "init", url)
    cli(env, "branch", url, "other")
    versions = {}
    procs = []
    for m, branch in enumerate(("main", "other")):
        menv = {**os.environ, **env, "CORAFS_CACHE_DIR": str(tmp_path / f"cache-m{m}")}
        files = []
        w = None
        for v in range(3):
            p = work / f"m{m}-v{v}.safetensors"
            w = _model(p, 10 * m + v, w)
            files.append(str(p))
        versions[branch] = files
        script = ("import sys; from corafs import Repository\n"
                  "r = Repository(sys.argv[1])\n"
                  "r.background_reencode = False\n"
                  "for f in sys.argv[3:]:\n"
                  "    r.commit(sys.argv[2], {'model.safetensors': f})\n"
                  "    r.reencode()\n")
        procs.append(subprocess.Popen([sys.executable, "-c", script, url, branch, *files],
                                      env=menv))
    for p in procs:
        assert p.wait() == 0
    from corafs import Repository
    from corafs.core.stats import chain_depth
    with Repository(url) as r:
        for branch, files in versions.items():
            for i, f in enumerate(reversed(files)):
                assert r.read_file(f"{branch}~{i}:model.safetensors") == open(f, "rb").read()
        st = r.stats()
        assert st.head_max_depth == 0 and st.reverse_deltas > 0, st
        memo = {}
        e = r.entry(r.resolve("main~2"), "model.safetensors")
        blocks = [b[0] for t in r.get_meta(e["id"])["tensors"]
                  for b in r.tensor_manifest(t["id"])["blocks"]]
        assert max(chain_depth(r, b, memo) for b in blocks) == 2
        _n, lease, _g = r.store.regs.read("locks/reencode")      # leases released
        assert json.loads(lease)["released"]
    assert "consistent" in cli(env, "fsck", url).stdout


@needs_fuse
@pytest.mark.mount
def test_two_mounts_on_two_machines_race_commits_on_one_branch(s3env, work, tmp_path):
    env, url = s3env
    cli(env, "init", url)
    mounts = []
    import contextlib
    with contextlib.ExitStack() as stack:
        for m in range(2):
            os.environ["CORAFS_CACHE_DIR"] = str(tmp_path / f"machine{m}")
            mnt = tmp_path / f"mnt{m}"
            stack.enter_context(mounted(url, mnt, "--commit-delay", "0.2"))
            mounts.append(mnt)
        os.environ["CORAFS_CACHE_DIR"] = env["CORAFS_CACHE_DIR"]

        def write(m):
            machine = {**env, "CORAFS_CACHE_DIR": str(tmp_path / f"machine{m}")}
            for i in range(5):
                (mounts[m] / "main" / f"m{m}-{i}.txt").write_text(f"machine {m} file {i}\n")
                # one commit per file, racing the other machine's: wait until it is in
                assert wait_for(lambda: "nothing staged" in cli(machine, "status", url).stdout,
                                timeout=60)
        threads = [threading.Thread(target=write, args=(m,)) for m in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        from corafs import Repository

        def all_there():
            with Repository(url) as r:
                return len(r.listdir(r.head("main"))) == 10
        assert wait_for(all_there, timeout=60)
        # each mount shows the other machine's files within a few seconds
        for mnt in mounts:
            assert wait_for(lambda: len(os.listdir(mnt / "main")) == 10, timeout=30)
    with Repository(url) as r:
        for m in range(2):
            for i in range(5):
                assert r.read_file(f"main:m{m}-{i}.txt") == f"machine {m} file {i}\n".encode()


class _BusyProxy(_Proxy):
    """Says 503 SlowDown with Retry-After: 2 to the first two requests."""
    busy = 2

    def _forward(self):
        if _BusyProxy.busy > 0:
            _BusyProxy.busy -= 1
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            body = b"<Error><Code>SlowDown</Code><Message>busy</Message></Error>"
            self.send_response(503)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super()._forward()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def test_temporary_refusals_are_retried_after_the_time_the_service_asks(moto_env, moto):
    env, url = moto_env
    cli(env, "init", url)
    host, port = moto.url[len("http://"):].split(":")
    _BusyProxy.target = (host, int(port))
    proxy = _serve(_BusyProxy)
    try:
        penv = {**env, "CORAFS_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_port}"}
        t = time.monotonic()
        p = cli(penv, "log", url)
        assert "Initialize repository" in p.stdout
        assert time.monotonic() - t >= 4.0           # waited the 2 s it was told, twice
        # (botocore's own backoff for two retries stays under 3 s)
        assert _BusyProxy.busy == 0
    finally:
        proxy.shutdown()


def test_prefetch_coalesces_neighbouring_objects_into_one_get(s3env, work):
    env, url = s3env
    from concurrent.futures import ThreadPoolExecutor
    from corafs import Repository
    p = work / "many.safetensors"
    safetensors.numpy.save_file({f"t{i}": np.random.default_rng(i).standard_normal(
        1 << 18, dtype=np.float32) for i in range(16)}, str(p))   # 16 blocks of 1 MiB
    with Repository.init(url) as r:
        r.commit("main", {"many.safetensors": str(p)})
    with Repository(url) as r:
        gets = []
        r.store.s3.meta.events.register("before-send.s3.GetObject",
                                        lambda request, **kw: gets.append(request.url))
        f = r.open_file(r.entry(r.head("main"), "many.safetensors"))
        oids = list(dict.fromkeys(f.objs))
        gets.clear()
        with ThreadPoolExecutor(2) as pool:
            r.decoder.prefetch(pool, oids)
        assert len(gets) <= 4 < len(oids), (len(gets), len(oids))
        assert f.read(0, f.size) == p.read_bytes()
        assert len(gets) <= 4                       # everything came from those GETs


def test_settings_live_in_the_bucket_and_no_change_is_lost(s3env, tmp_path):
    """``corafs config`` on an S3 repository writes the config's next generation in the bucket
    (create-if-absent): a second machine sees it, and two machines changing settings keep both
    changes."""
    from corafs import Repository
    env, url = s3env
    cli(env, "init", url)
    other = {**env, "CORAFS_CACHE_DIR": str(tmp_path / "cache-other")}
    with Repository(url) as a, Repository(url) as b:      # both read the config now
        a.set_config("max_delta_depth", "3")
        b.set_config("head_codec", "planes-zstd")          # b's copy is stale: re-read
    assert cli(other, "config", url, "max_delta_depth").stdout.strip() == "3"
    assert cli(other, "config", url, "head_codec").stdout.strip() == "planes-zstd"
    with Repository(url) as r:
        assert (r.tuning.max_delta_depth, r.tuning.head_codec) == (3, "planes-zstd")


def _keys(env, url, rel_prefix):
    import boto3
    bucket, prefix = url[len("s3://"):].split("/", 1)
    c = boto3.client("s3", endpoint_url=env["CORAFS_S3_ENDPOINT_URL"])
    return [o["Key"][len(prefix) + 1:] for page in c.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{prefix}/{rel_prefix}") for o in page.get("Contents", [])]


@pytest.mark.smoke
def test_doctor_reports_what_each_service_does_and_what_corafs_uses(s3env, server):
    import re
    env, url = s3env
    out = cli(env, "doctor", url).stdout
    assert re.search(r"PUT If-None-Match: \*\s+atomic\s+used by corafs: 8 writers racing to "
                     r"create one key, 3 rounds: winners 1/1/1", out), out
    assert "none yet at this prefix" in out and "this service is usable" in out
    if server.kind == "ceph":           # Ceph RGW 16: what made corafs refuse it before
        assert re.search(r"PUT If-Match\s+refuses the right ETag\s+not used", out), out
        assert re.search(r"DELETE If-Match\s+ignored\s+not used", out), out
    else:
        assert re.search(r"PUT If-Match\s+honoured\s+not used", out), out
        assert re.search(r"DELETE If-Match\s+honoured\s+not used", out), out
    assert not _keys(env, url, "probe/")                    # the probe cleans up after itself
    cli(env, "init", url)                                   # ... and init accepts the service
    assert "repository: format 2 (1 branch(es), 0 tag(s))" in cli(env, "doctor", url).stdout


def test_branches_created_moved_deleted_and_recreated_by_racing_processes(s3env, work,
                                                                          tmp_path):
    """Two processes take turns on one branch with nothing but its refs between them: each
    creates it (only if absent), commits to it, deletes it, four times. Every step is a
    compare-and-swap, so a process that finishes proves none of its steps was overtaken."""
    env, url = s3env
    cli(env, "init", url)
    script = (
        "import sys, json, time\n"
        "from corafs import Repository\n"
        "from corafs.errors import RefExists\n"
        "r = Repository(sys.argv[1]); me, path = sys.argv[2], sys.argv[3]\n"
        "done = []\n"
        "while len(done) < 4:\n"
        "    try:\n"
        "        r.create_branch('exp', 'main')\n"
        "    except RefExists:\n"
        "        time.sleep(0.01); continue\n"
        "    open(path, 'w').write(f'{me} round {len(done)}\\n')\n"
        "    done.append(r.commit('exp', {'owner.txt': path}, message=f'{me} {len(done)}').commit)\n"
        "    r.delete_branch('exp')\n"
        "r.close(); print(json.dumps(done))\n")
    procs = [subprocess.Popen(
        [sys.executable, "-c", script, url, f"p{m}", str(work / f"p{m}.txt")],
        env={**os.environ, **env, "CORAFS_CACHE_DIR": str(tmp_path / f"cache-p{m}")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in range(2)]
    made = {}
    for m, p in enumerate(procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        made[f"p{m}"] = json.loads(out)
    from corafs import Repository
    with Repository(url) as r:
        main = r.head("main")
        assert "exp" not in r.branches()
        log = r.reflog("exp")
        deleted = {e["old"] for e in log if e["action"] == "branch: deleted"}
        for me, cids in made.items():
            for i, cid in enumerate(cids):
                c = r.commit_obj(cid)
                assert list(c.parents) == [main]                 # nobody else's commit beneath
                assert r.read_file(f"{cid}:owner.txt") == f"{me} round {i}\n".encode()
                assert cid in deleted                        # deleted by its own process
        assert len(deleted) == 8
        newest = r.undelete_branch("exp")                  # and it comes back from the reflog
        assert newest in deleted
    # superseded generations: writers delete them as they go, gc sweeps what is left
    from corafs.store.s3refs import TRIM_AT
    assert len(_keys(env, url, "refs/heads/exp/")) <= TRIM_AT + 2
    cli(env, "gc", url)
    gens = _keys(env, url, "refs/heads/exp/")
    assert len(gens) <= 2
    assert "consistent" in cli(env, "fsck", url).stdout


def test_a_format_1_repository_is_read_and_migrates_on_its_first_write(moto_env, work,
                                                                       tmp_path):
    """Refs as single objects moved with If-Match (corafs before generations): read as they
    are; the first write says format 2 in corafs.json and turns each ref into generation 1.
    (moto only: format 1 was never accepted on Ceph RGW 16, whose If-Match refuses its ETag.)"""
    import boto3
    env, url = moto_env
    bucket, prefix = url[len("s3://"):].split("/", 1)
    c = boto3.client("s3", endpoint_url=env["CORAFS_S3_ENDPOINT_URL"])
    cli(env, "init", url)
    p = work / "model.safetensors"
    _model(p, 1)
    cli(env, "commit", url, p, "-m", "one")
    cli(env, "tag", url, "v1")
    from corafs import Repository
    with Repository(url) as r:
        refs = r.store.list_refs()
    # what corafs before generation refs left in a bucket
    for rel in _keys(env, url, "refs/") + _keys(env, url, "config/") + _keys(env, url, "locks/"):
        c.delete_object(Bucket=bucket, Key=f"{prefix}/{rel}")
    for name, oid in refs.items():
        c.put_object(Bucket=bucket, Key=f"{prefix}/refs/{name}", Body=oid.encode() + b"\n")
    cfg = json.loads(c.get_object(Bucket=bucket, Key=f"{prefix}/corafs.json")["Body"].read())
    cfg["format"] = 1
    c.put_object(Bucket=bucket, Key=f"{prefix}/corafs.json", Body=json.dumps(cfg).encode())

    assert "repository: format 1 (1 branch(es))" in cli(env, "doctor", url).stdout
    out = tmp_path / "out"
    cli(env, "export", url, "v1:model.safetensors", out)           # read as it is
    assert sha256_file(out) == sha256_file(p)
    assert _keys(env, url, "refs/") == sorted(f"refs/{n}" for n in refs)   # nothing written
    _model(p, 2)
    cli(env, "commit", url, p, "-m", "two")                        # the first write migrates
    cfg = json.loads(c.get_object(Bucket=bucket, Key=f"{prefix}/corafs.json")["Body"].read())
    assert cfg["format"] == 2
    keys = _keys(env, url, "refs/")
    assert not [k for k in keys if k.count("/") == 2]              # no single-object refs left
    assert {k.rsplit("/", 1)[0] for k in keys} == {f"refs/{n}" for n in refs}
    with Repository(url) as r:
        assert r.reflog("main")[0]["old"] == refs["heads/main"]
        assert r.read_file("main~1:model.safetensors") == out.read_bytes()
        assert r.tags() == {"v1": refs["heads/main"]}
    assert "consistent" in cli(env, "fsck", url).stdout


def test_gcs_create_if_absent_is_a_generation_precondition(moto_env):
    """On Google Cloud Storage's XML API create-if-absent is ``x-goog-if-generation-match: 0``
    (If-None-Match only applies to reads there): the client rewrites the header before signing.
    There is no GCS here; moto_server does not know that header, so with the rewrite forced on,
    what reaches it is an unconditional PUT, and the probe must see every writer win."""
    from botocore.awsrequest import AWSRequest
    from corafs.store.s3probe import gcs_preconditions, uses_gcs_preconditions
    assert uses_gcs_preconditions("https://storage.googleapis.com")
    assert not uses_gcs_preconditions("http://127.0.0.1:9000")
    req = AWSRequest("PUT", "https://storage.googleapis.com/b/k", data=b"x",
                     headers={"If-None-Match": "*"})
    gcs_preconditions(req)
    assert "If-None-Match" not in req.headers
    assert req.headers["x-goog-if-generation-match"] == "0"
    env, url = moto_env
    p = cli({**env, "CORAFS_S3_PRECONDITIONS": "gcs"}, "init", url, check=False)
    assert p.returncode != 0
    assert "PUT x-goog-if-generation-match: 0 ignored" in p.stderr, p.stderr
    assert "winners 8/8/8" in p.stderr
    assert cli(env, "init", url).returncode == 0                 # the same service, as S3
