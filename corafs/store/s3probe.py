"""What an S3-compatible service does with conditional writes, proved by trying them.

corafs needs exactly one thing from a service: that of several writers racing to create one key
with ``If-None-Match: *`` exactly one succeeds and the others are told they lost (412 or 409).
Refs, the config and leases are built on that alone (``s3refs``). The probe checks it by racing
writers for real, several rounds, rather than by whether the header is accepted: a service that
ignores the header answers 200 to every writer, one that checks and then writes without a lock
lets two win. It also reports, for the record, what the service does with ``If-Match`` on PUT and
DELETE, which corafs no longer uses (MinIO ignores it on DELETE, Ceph RGW 16 refuses the quoted
ETag S3 itself returns and ignores it on DELETE, GCS's XML API has generation preconditions
instead).

Answers are judged by their status: 412 and 409 are "lost the race", 404 on If-Match is "gone",
501 (or NotImplemented) is "unsupported"; anything else is an error, raised.

On Google Cloud Storage (an endpoint on ``storage.googleapis.com``, or
``CORAFS_S3_PRECONDITIONS=gcs``) the client sends ``x-goog-if-generation-match: 0`` where S3
takes ``If-None-Match: *`` (``gcs_preconditions``): same meaning, "only if no live object".
"""
from __future__ import annotations

import dataclasses
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from urllib.parse import urlparse

from ..errors import CorafsError
from .s3client import S3Bucket, _code, lost_race

#: racing writers per round, and rounds
WRITERS, ROUNDS = 8, 3
_WRONG_ETAG = '"0123456789abcdef0123456789abcdef"'

#: where each feature is known to exist (services' documentation and trackers, late 2026)
KNOWN = {
    "create": "AWS S3 (since 2024-08), MinIO, Ceph RGW, Cloudflare R2, SeaweedFS 4.18+, "
              "Google Cloud Storage (as x-goog-if-generation-match: 0)",
}


# -- GCS -------------------------------------------------------------------------------------
def uses_gcs_preconditions(endpoint: Optional[str]) -> bool:
    mode = os.environ.get("CORAFS_S3_PRECONDITIONS", "auto")
    if mode in ("gcs", "s3"):
        return mode == "gcs"
    host = urlparse(endpoint or "").hostname or ""
    return host == "storage.googleapis.com" or host.endswith(".storage.googleapis.com")


def gcs_preconditions(request, **_kw) -> None:
    """botocore ``before-sign`` hook: create-if-absent in GCS's own words."""
    if request.headers.get("If-None-Match") == "*":
        del request.headers["If-None-Match"]
        request.headers["x-goog-if-generation-match"] = "0"


# -- the probe -------------------------------------------------------------------------------
@dataclasses.dataclass
class Check:
    feature: str
    result: str          # "atomic", "honoured", "ignored", "not atomic", "unsupported", ...
    detail: str
    ok: bool
    used: bool


@dataclasses.dataclass
class Report:
    location: str
    endpoint: str
    server: str
    checks: list

    @property
    def usable(self) -> bool:
        return all(c.ok for c in self.checks if c.used)

    def text(self) -> str:
        lines = [f"service: {self.endpoint} ({self.server})", f"bucket:  {self.location}", ""]
        width = max(len(c.feature) for c in self.checks)
        for c in self.checks:
            use = "used by corafs" if c.used else "not used"
            lines.append(f"  {c.feature:<{width}}  {c.result:<23} {use}: {c.detail}")
        lines.append("")
        if self.usable:
            lines.append("corafs will keep refs, the config and leases as immutable generations "
                         f"created with {self.checks[0].feature.split(' ', 1)[1]}: "
                         "this service is usable")
        else:
            lines.append("corafs cannot keep atomic refs on this service")
        return "\n".join(lines)


def _status(e) -> str:
    code = _code(e)
    if lost_race(e):
        return "lost"
    if code in ("NoSuchKey", "404"):
        return "gone"
    if code in ("NotImplemented", "501"):
        return "unsupported"
    raise e


def _try(call, strict: bool = True) -> str:
    """"ok", "lost", "gone" or "unsupported"; another refusal is raised, or (``strict`` off,
    for the features corafs does not use) returned as "error <code>"."""
    try:
        call()
        return "ok"
    except Exception as e:
        try:
            return _status(e)
        except Exception:
            if strict:
                raise
            return f"error {_code(e)}"


def probe(remote: S3Bucket) -> Report:
    """Race writers and try stale conditions under ``<prefix>/probe/<random>/`` (deleted after)."""
    client = remote.client
    gcs = uses_gcs_preconditions(client.meta.endpoint_url)
    base = f"probe/{uuid.uuid4().hex}"
    made: list[str] = []
    server = "Server header not given"
    checks = []
    try:
        # 1. create-if-absent, raced
        winners, outcomes = [], set()
        with ThreadPoolExecutor(WRITERS) as pool:
            for r in range(ROUNDS):
                rel = f"{base}/race-{r}"
                made.append(rel)
                got = list(pool.map(lambda i: _try(lambda: remote.put(
                    rel, str(i).encode(), IfNoneMatch="*")), range(WRITERS)))
                winners.append(got.count("ok"))
                outcomes.update(got)
        feature = "PUT x-goog-if-generation-match: 0" if gcs else "PUT If-None-Match: *"
        raced = f"{WRITERS} writers racing to create one key, {ROUNDS} rounds: winners " + \
            "/".join(map(str, winners))
        if "unsupported" in outcomes:
            checks.append(Check(feature, "unsupported", "the service answered 501", False, True))
        elif all(w == 1 for w in winners):
            checks.append(Check(feature, "atomic", raced, True, True))
        elif all(w == WRITERS for w in winners):
            checks.append(Check(feature, "ignored", raced, False, True))
        else:
            checks.append(Check(feature, "not atomic", raced, False, True))
        # 2. If-Match on PUT: a stale ETag, the right one, a missing key
        rel = made[0]
        head = client.head_object(Bucket=remote.bucket, Key=remote.key(rel))
        etag = head["ETag"]
        server = head["ResponseMetadata"]["HTTPHeaders"].get("server", server)
        stale = _try(lambda: remote.put(rel, b"s", IfMatch=_WRONG_ETAG), strict=False)
        right = (_try(lambda: remote.put(rel, b"r", IfMatch=etag), strict=False)
                 if stale != "ok" else "-")
        missing_rel = f"{base}/missing"
        made.append(missing_rel)
        missing = _try(lambda: remote.put(missing_rel, b"m", IfMatch=etag), strict=False)
        errors = [x for x in (stale, right) if x.startswith("error")]
        if "unsupported" in (stale, right):
            res, det = "unsupported", "the service answered 501"
        elif errors:
            res, det = "unsupported", f"the service answered {errors[0][6:]}"
        elif stale == "ok":
            res, det = "ignored", "a stale ETag was accepted"
        elif right != "ok":
            res, det = "refuses the right ETag", "the ETag the service itself returned " \
                                                 "was refused (seen on Ceph RGW 16)"
        elif missing == "ok":
            res, det = "creates missing keys", "a write to a missing key was accepted"
        else:
            res, det = "honoured", f"stale ETag: 412; missing key: {missing}"
        checks.append(Check("PUT If-Match", res, det, res == "honoured", False))
        # 3. If-Match on DELETE with a stale ETag
        rel = made[1]
        deleted = _try(lambda: client.delete_object(Bucket=remote.bucket, Key=remote.key(rel),
                                                    IfMatch=_WRONG_ETAG), strict=False)
        if deleted == "ok":
            try:
                client.head_object(Bucket=remote.bucket, Key=remote.key(rel))
                res, det = "ignored", "answered 204 and kept the object"
            except Exception:
                res, det = "ignored", "deleted the object under a stale ETag"
        elif deleted == "unsupported" or deleted.startswith("error"):
            res, det = "unsupported", ("the service answered 501" if deleted == "unsupported"
                                       else f"the service answered {deleted[6:]}")
        else:
            res, det = "honoured", "a stale ETag was refused"
        checks.append(Check("DELETE If-Match", res, det, res == "honoured", False))
    finally:
        for rel in made:
            try:
                client.delete_object(Bucket=remote.bucket, Key=remote.key(rel))
            except Exception:
                pass
    return Report(f"s3://{remote.bucket}/{remote.prefix}", client.meta.endpoint_url, server,
                  checks)


def require(remote: S3Bucket) -> Report:
    """The probe, refusing (CorafsError) a service where two writers could both win."""
    rep = probe(remote)
    if not rep.usable:
        c = rep.checks[0]
        raise CorafsError(
            f"s3://{remote.bucket}: this service does not honour conditional writes "
            f"({c.feature} {c.result}: {c.detail}). corafs needs nothing else, but needs "
            f"that: without it two writers could both move a branch and one commit would be "
            f"lost. Services known to have it: {KNOWN['create']}; Garage, Backblaze B2 and "
            "DigitalOcean Spaces do not. `corafs doctor URL` prints what this one does")
    return rep
