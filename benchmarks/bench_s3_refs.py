"""What generation refs cost on real S3 implementations (issue 23), in one run per server.

Starts moto_server and (where Debian's ceph-mon, ceph-osd and radosgw are installed) a
throwaway Ceph radosgw cluster on 127.0.0.1 (the test suite's ``tests/s3servers.py``), then
for each:
1. the probe (`corafs doctor`): what the service's conditional writes do;
2. requests per operation, counted on the wire (botocore's before-send events): a commit of a
   small file, creating a branch, deleting it, reading a ref;
3. the time of one ref move (compare-and-swap: list, read, create-if-absent, delete what it
   superseded) against one unconditional PUT of the same bytes on the same server.

  python benchmarks/bench_s3_refs.py [--moves 50]
"""
import argparse
import collections
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from harness import Report, workdir  # noqa: E402
import s3servers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=50)
    a = ap.parse_args()
    kinds = ["moto"] + ([] if s3servers.ceph_missing() else ["ceph"])
    rep = Report("bench_s3_refs", moves=a.moves, servers=kinds)
    with workdir("bench_s3_refs") as wd:
        for kind in kinds:
            srv = s3servers.start(kind)
            try:
                run(kind, srv, wd, a.moves, rep)
            finally:
                srv.stop()
    rep.done("generation refs on S3")


def run(kind, srv, wd, moves, rep) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID=srv.access_key, AWS_SECRET_ACCESS_KEY=srv.secret_key,
                      AWS_DEFAULT_REGION="us-east-1", CORAFS_S3_ENDPOINT_URL=srv.url,
                      CORAFS_CACHE_DIR=os.path.join(wd, f"cache-{kind}"))
    import boto3
    boto3.DEFAULT_SESSION = None            # each server has its own credentials
    bucket = f"refs-{kind}"
    boto3.client("s3", endpoint_url=srv.url).create_bucket(Bucket=bucket)
    from corafs import Repository
    from corafs.store import diagnose
    url = f"s3://{bucket}/repo"
    text, _usable = diagnose(url)
    print(f"--- {kind}\n{text}\n")
    f = os.path.join(wd, "f.txt")
    with Repository.init(url) as r:
        r.background_reencode = False
        ops = collections.Counter()
        r.store.s3.meta.events.register("before-send.s3", lambda request, **kw: ops.update(
            ["LIST" if "list-type" in request.url else request.method]))

        def count(what, fn):
            ops.clear()
            fn()
            total = sum(ops.values())
            rep.row(f"{kind}: requests, {what}", total, "req",
                    detail=", ".join(f"{n} {k}" for k, n in sorted(ops.items())))
        for i in range(3):
            with open(f, "w") as fh:
                fh.write(f"version {i}\n" * 100)
            r.commit("main", {"f.txt": f})
        with open(f, "w") as fh:
            fh.write("version 4\n" * 100)
        count("commit of a small file", lambda: r.commit("main", {"f.txt": f}))
        count("create a branch", lambda: r.create_branch("b"))
        count("delete a branch", lambda: r.delete_branch("b"))
        count("read a ref", lambda: r.head("main"))
        # one ref move against one plain PUT of the same bytes
        head = r.head("main")
        other = r.commit_obj(head).parents[0]
        moves_s, puts_s = [], []
        body = head.encode() + b"\n"
        cur = None
        for _ in range(moves):
            new = other if cur == head else head
            t = time.perf_counter()
            r.store.cas_ref("heads/bench", cur, new)
            moves_s.append(time.perf_counter() - t)
            cur = new
            t = time.perf_counter()
            r.store.remote.put("bench-plain", body)
            puts_s.append(time.perf_counter() - t)
        mv, pt = statistics.median(moves_s), statistics.median(puts_s)
        rep.row(f"{kind}: one ref move (median)", mv * 1e3, "ms", baseline=pt * 1e3,
                baseline_what="one unconditional PUT")


if __name__ == "__main__":
    main()
