"""A lease across machines on an S3 bucket: ``locks/<name>`` created with If-None-Match,
renewed with If-Match every ttl/3 by a thread, taken over only once expired, deleted with
If-Match when released. The holder's work must be idempotent: a lease that could not be
renewed (the service was unreachable for ttl) lets another machine in."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from .s3client import S3Bucket, lost_race


@contextlib.contextmanager
def lease(remote: S3Bucket, name: str, blocking: bool = True, ttl: float = 300.0):
    """Hold ``locks/<name>`` exclusively; yields whether it was taken (always, when
    blocking)."""
    rel = f"locks/{name}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def body():
        return json.dumps({"owner": owner, "expires": time.time() + ttl}).encode()
    etag = None
    while etag is None:
        try:
            etag = remote.put(rel, body(), IfNoneMatch="*")["ETag"]
            break
        except Exception as e:
            if not lost_race(e):
                raise
        got = remote.get(rel)
        if got is not None:
            try:
                expired = json.loads(got[0]).get("expires", 0) < time.time()
            except ValueError:
                expired = True
            if expired:
                try:
                    etag = remote.put(rel, body(), IfMatch=got[1])["ETag"]
                    break
                except Exception as e:
                    if not lost_race(e):
                        raise
        if not blocking:
            yield False
            return
        time.sleep(0.5)
    stop = threading.Event()
    state = {"etag": etag}

    def renew():
        while not stop.wait(ttl / 3):
            try:
                state["etag"] = remote.put(rel, body(), IfMatch=state["etag"])["ETag"]
            except Exception:
                return          # lost: it expires; the holder's work is idempotent
    t = threading.Thread(target=renew, daemon=True, name=f"corafs-lease-{name}")
    t.start()
    try:
        yield True
    finally:
        stop.set()
        t.join()
        try:
            remote.delete(rel, IfMatch=state["etag"])
        except Exception:
            pass
