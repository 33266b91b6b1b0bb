"""corafs on an S3-compatible store against the raw clients, in one run (issue 10).

Starts its own S3 server on 127.0.0.1 (moto_server), then:
1. client choice: boto3 against obstore on the same server: small ranged GETs (block headers),
   parallel 4 MiB ranged GETs (block reads), one 32 MiB PUT (a pack);
2. commit of a checkpoint of --mib MiB to S3 against boto3's own multipart upload of the raw
   file, and a cold cat of it through an S3 mount against boto3's download_file;
3. push of the 10-checkpoint fine-tune series (benchmarks/transformer_run.py): bytes sent
   against the bytes the local store holds.

  python benchmarks/bench_s3.py [--mib 1024]

moto_server is a Python server: absolute speeds measure it as much as the clients; the ratios
against the same server are the point.
"""
import argparse
import concurrent.futures as cf
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Report, cat, checkpoints_dir, corafs, drop_caches, mounted,  # noqa: E402
                     timed, workdir)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secs(fn) -> float:
    return timed(fn)[0]


def clients(rep, endpoint, bucket):
    import boto3
    import obstore as obs
    from obstore.store import S3Store
    b3 = boto3.client("s3", endpoint_url=endpoint)
    ob = S3Store(bucket, endpoint=endpoint, region="us-east-1",
                 client_options={"allow_http": True}, virtual_hosted_style_request=False)
    data = os.urandom(32 << 20)
    rows = []
    t_b = secs(lambda: b3.put_object(Bucket=bucket, Key="bench/b", Body=data))
    t_o = secs(lambda: obs.put(ob, "bench/o", data))
    rows.append(("PUT 32 MiB (MB/s)", 32 * 1.048576 / t_b, 32 * 1.048576 / t_o))
    n = 200
    t_b = secs(lambda: [b3.get_object(Bucket=bucket, Key="bench/b", Range=f"bytes={i}-{i + 599}")
                         ["Body"].read() for i in range(n)])
    t_o = secs(lambda: [bytes(obs.get_range(ob, "bench/o", start=i, length=600))
                         for i in range(n)])
    rows.append(("600 B ranged GETs, one at a time (req/s)", n / t_b, n / t_o))
    offs = [(i * (4 << 20)) % (28 << 20) for i in range(32)]
    with cf.ThreadPoolExecutor(8) as ex:
        t_b = secs(lambda: list(ex.map(lambda o: b3.get_object(
            Bucket=bucket, Key="bench/b", Range=f"bytes={o}-{o + (4 << 20) - 1}")["Body"].read(),
            offs)))
        t_o = secs(lambda: list(ex.map(lambda o: bytes(obs.get_range(
            ob, "bench/o", start=o, length=4 << 20)), offs)))
    rows.append(("4 MiB ranged GETs, 8 in flight (MB/s)", 32 * 4.194304 / t_b,
                 32 * 4.194304 / t_o))
    for label, b, o in rows:
        rep.row(f"obstore: {label}", o, "", baseline=b, baseline_what="boto3")


def checkpoint(rep, work, endpoint, bucket, mib):
    import boto3
    from boto3.s3.transfer import TransferConfig
    import safetensors.numpy
    rng = np.random.default_rng(0)
    sd = {f"layer{i}.weight": rng.standard_normal((2048, 2048), dtype=np.float32) * 0.02
          for i in range(mib // 16)}
    path = os.path.join(work, "model.safetensors")
    safetensors.numpy.save_file(sd, path)
    size = os.path.getsize(path)
    b3 = boto3.client("s3", endpoint_url=endpoint)
    cfg = TransferConfig()                     # boto3's defaults: 8 MiB parts, 10 threads
    t_up = secs(lambda: b3.upload_file(path, bucket, "raw/model.safetensors", Config=cfg))
    url = f"s3://{bucket}/repo"
    corafs("init", url)
    t_commit = secs(lambda: corafs("commit", url, path))
    dl = os.path.join(work, "dl.safetensors")
    drop_caches()
    t_dl = secs(lambda: b3.download_file(bucket, "raw/model.safetensors", dl, Config=cfg))
    os.unlink(dl)
    mnt = os.path.join(work, "mnt")
    shutil.rmtree(os.environ["CORAFS_CACHE_DIR"], ignore_errors=True)   # a cold machine
    with mounted(url, mnt) as m:
        drop_caches()
        t_cat = cat(os.path.join(m, "main", "model.safetensors"))
    # warm: this machine's disk cache holds the objects; a fresh mount, page cache dropped
    with mounted(url, mnt) as m:
        drop_caches()
        t_warm = cat(os.path.join(m, "main", "model.safetensors"))
    drop_caches()
    t_local = secs(lambda: open(path, "rb").read())
    mb = size / 1e6
    what = f"{size / 2**20:.0f} MiB fp32 checkpoint"
    rep.row(f"{what}: corafs commit", mb / t_commit, "MB/s", baseline=mb / t_up,
            baseline_what="boto3 multipart upload of the file", aim="ratio >= 0.5")
    rep.row(f"{what}: cold cat through an S3 mount", mb / t_cat, "MB/s", baseline=mb / t_dl,
            baseline_what="boto3 download_file", aim="ratio >= 0.5")
    rep.row(f"{what}: warm cat (disk cache full, page cache dropped)", mb / t_warm, "MB/s",
            baseline=mb / t_local, baseline_what="local disk", aim="ratio >= 0.5")


def push(rep, work, bucket):
    from transformer_run import generate
    series = generate(checkpoints_dir(), 10)
    local = os.path.join(work, "local")
    corafs("init", local)
    for files in series:
        corafs("commit", local, files["fp32/model.safetensors"])
    held = sum(os.path.getsize(os.path.join(local, "objects", f))
               for f in os.listdir(os.path.join(local, "objects")) if f.endswith((".h5", ".idx")))
    p = subprocess.run([sys.executable, "-m", "corafs", "push", local,
                        f"s3://{bucket}/pushed"], capture_output=True, text=True, check=True)
    from corafs import Repository
    with Repository(f"s3://{bucket}/pushed") as r:
        sent = r.store.stored_bytes()
    rep.row("push of 10 fp32 checkpoints: bytes sent", sent / 1e6, "MB", baseline=held / 1e6,
            baseline_what="held by the local store", summary=p.stdout.splitlines()[-1].strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    a = ap.parse_args()
    rep = Report("s3", mib=a.mib, server="moto_server")
    with workdir("s3") as work:
        run(rep, work, a.mib)
    rep.done("against moto_server on 127.0.0.1 (a Python server: the ratios are the point)")


def run(rep, work, mib):
    port = free_port()
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "CORAFS_S3_ENDPOINT_URL": endpoint,
                       "AWS_ENDPOINT_URL_S3": endpoint,
                       "CORAFS_CACHE_DIR": os.path.join(work, "cache")})
    try:
        import boto3
        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        clients(rep, endpoint, "bench")
        checkpoint(rep, work, endpoint, "bench", mib)
        push(rep, work, "bench")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
