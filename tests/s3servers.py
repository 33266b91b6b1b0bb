"""Real S3 implementations on 127.0.0.1 for the tests, started and stopped by them.

- ``moto``: moto_server (Python, from the test extra).
- ``ceph``: Ceph's own radosgw from Debian's packages (``ceph-mon ceph-osd radosgw
  ceph-common``, installed by ``make test``), as a throwaway single-node cluster in a temporary
  directory: one monitor (msgr2 only, no cephx), one OSD on ``memstore`` (in memory), radosgw
  with its beast frontend, and a user with known keys. Up in about two seconds. Its conditional
  writes differ from AWS exactly where corafs used to rely on them (Ceph 16 refuses ``If-Match``
  with the quoted ETag S3 returns, and ignores ``If-Match`` on DELETE), which is why it is here.
"""
from __future__ import annotations

import dataclasses
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

from mountutil import wait_for

SECRET = "corafs-test-secret-Zq81xW"
CEPH_BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")


@dataclasses.dataclass
class Server:
    kind: str
    url: str
    access_key: str
    secret_key: str
    procs: list
    workdir: str = ""

    def stop(self) -> None:
        """Killed outright: a throwaway server keeps nothing worth a clean shutdown (radosgw
        takes seconds to stop on SIGTERM)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        c.request("GET", "/")
        c.getresponse().read()
        return True
    except OSError:
        return False


def start_moto() -> Server:
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = Server("moto", f"http://127.0.0.1:{port}", "testing", SECRET, [proc])
    if not wait_for(lambda: _answers(port), timeout=30):
        srv.stop()
        raise RuntimeError("moto_server did not start")
    return srv


def ceph_missing() -> list[str]:
    return [b for b in CEPH_BINARIES if shutil.which(b) is None]


def start_ceph() -> Server:
    d = tempfile.mkdtemp(prefix="corafs-ceph-")
    for sub in ("run", "log", "mon", "osd", "rgw"):
        os.makedirs(os.path.join(d, sub))
    mon_port, rgw_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = os.path.join(d, "ceph.conf")
    with open(conf, "w") as f:
        f.write(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr1 = false
ms mon client mode = crc secure
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 4294967296
paxos propose interval = 0.01
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
mon data = {d}/mon
osd data = {d}/osd
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {d}/rgw
""")
    srv = Server("ceph", f"http://127.0.0.1:{rgw_port}", "corafstest", SECRET, [], d)

    def run(*args):
        subprocess.run(list(args), check=True, capture_output=True, timeout=60, cwd=d)
    try:
        monmap = os.path.join(d, "monmap")
        run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
            "--fsid", fsid, monmap)
        run("ceph-mon", "-c", conf, "--mkfs", "-i", "a", "--monmap", monmap)
        srv.procs.append(subprocess.Popen(["ceph-mon", "-c", conf, "-i", "a", "-f"], cwd=d,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        run("ceph", "-c", conf, "osd", "create")
        run("ceph-osd", "-c", conf, "-i", "0", "--mkfs")
        srv.procs.append(subprocess.Popen(["ceph-osd", "-c", conf, "-i", "0", "-f"], cwd=d,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        srv.procs.append(subprocess.Popen(["radosgw", "-c", conf, "-n", "client.rgw", "-f"],
                                          cwd=d, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        run("radosgw-admin", "-c", conf, "-n", "client.admin", "user", "create", "--uid",
            "corafs", "--display-name", "corafs tests", "--access-key", srv.access_key,
            "--secret", srv.secret_key)
        if not wait_for(lambda: _answers(rgw_port), timeout=60):
            raise RuntimeError(f"radosgw did not answer (logs in {d}/log)")
    except BaseException:
        srv.stop()
        raise
    return srv


def start(kind: str) -> Server:
    return {"moto": start_moto, "ceph": start_ceph}[kind]()
