"""A lease across machines on an S3 bucket, as a generation register ``locks/<name>``
(``corafs.store.s3refs``): each generation says who holds it until when, or that it was
released. Taking the lease is creating the next generation after a free one (released, expired
or none); renewing it every ttl/3 is creating the next after one's own; releasing it is a
released generation. Every step is one create-if-absent, so of two machines only one can take
the lease, and a holder whose renewal finds a newer generation knows it lost the lease (it
expired while the service was unreachable and another machine took it over). The holder's work
must be idempotent for that case."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from .s3refs import Registers


def _free(body) -> bool:
    if body is None:
        return True
    try:
        state = json.loads(body)
        return bool(state.get("released")) or state.get("expires", 0) < time.time()
    except (ValueError, AttributeError):
        return True


@contextlib.contextmanager
def lease(regs: Registers, name: str, blocking: bool = True, ttl: float = 300.0):
    """Hold ``locks/<name>`` exclusively; yields whether it was taken (always, when
    blocking)."""
    base = f"locks/{name}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def body(released: bool = False) -> bytes:
        state = {"owner": owner, "expires": time.time() + ttl}
        if released:
            state["released"] = True
        return json.dumps(state).encode()
    while True:
        n, current, gens = regs.read(base)
        if _free(current) and regs.write(base, n, body(), gens):
            break
        if not blocking:
            yield False
            return
        time.sleep(0.5)
    state = {"gen": n + 1}
    stop = threading.Event()

    def renew():
        while not stop.wait(ttl / 3):
            try:
                g = state["gen"]
                if not regs.write(base, g, body()):
                    return      # taken over after it expired: the holder's work is idempotent
                state["gen"] = g + 1
            except Exception:
                pass            # unreachable now; the next renewal tries again
    t = threading.Thread(target=renew, daemon=True, name=f"corafs-lease-{name}")
    t.start()
    try:
        yield True
    finally:
        stop.set()
        t.join()
        try:
            g = state["gen"]
            regs.write(base, g, body(released=True))
        except Exception:
            pass                # it expires
