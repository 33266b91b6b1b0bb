"""The S3 side of ``S3Store``: URLs, the boto3 client (retries, Retry-After), and
:class:`S3Bucket`: the requests corafs makes under one ``s3://bucket/prefix`` (put with
conditions, get, ranged get, list, upload, delete) with errors that name the key and the
service's code only.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional
from urllib.parse import urlparse

from ..errors import CorafsError

_MiB = 1 << 20


def is_url(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith("s3://")


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise CorafsError(f"not an S3 URL: {url} (expected s3://bucket/prefix)")
    return u.netloc, u.path.strip("/")


def cache_root() -> str:
    return os.environ.get("CORAFS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "corafs")


def local_dir(url: str) -> str:
    """This machine's directory for a remote repository: index cache, mount staging, logs."""
    bucket, prefix = parse_url(url)
    import hashlib
    tag = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "s3", f"{bucket}-{tag}")


class S3Error(CorafsError):
    """A request the service refused for good (after retries): names the key and the code."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


_ATTEMPTS = 10


def make_client():
    import boto3
    from botocore.config import Config
    endpoint = os.environ.get("CORAFS_S3_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint, config=Config(
        retries={"mode": "standard", "max_attempts": _ATTEMPTS},
        max_pool_connections=32, connect_timeout=10, read_timeout=60))
    client.meta.events.register_first("needs-retry.s3", _retry_after)
    from . import s3probe
    if s3probe.uses_gcs_preconditions(client.meta.endpoint_url):
        client.meta.events.register("before-sign.s3.PutObject", s3probe.gcs_preconditions)
    return client


def _retry_after(response=None, attempts=None, **_kw):
    """A temporary refusal that says when to come back (Retry-After, in seconds) is retried
    after that long (capped at a minute, with jitter); otherwise botocore's standard mode
    decides (exponential backoff with jitter)."""
    if response is None or attempts is None or attempts >= _ATTEMPTS:
        return None
    http = response[0]
    if getattr(http, "status_code", None) not in (408, 429, 500, 502, 503, 504):
        return None
    value = (getattr(http, "headers", None) or {}).get("Retry-After")
    try:
        delay = float(value)
    except (TypeError, ValueError):
        return None
    import random
    return min(max(delay, 0.0), 60.0) + random.uniform(0, 0.1)


def _code(e) -> str:
    if isinstance(e, S3Error) and e.code:
        return e.code
    r = getattr(e, "response", None) or {}
    return str(r.get("Error", {}).get("Code") or r.get("ResponseMetadata", {}).get(
        "HTTPStatusCode") or type(e).__name__)


#: how services say "your condition did not hold" (a lost race, not a failure)
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def lost_race(e) -> bool:
    return _code(e) in _CONFLICT


def describe(e, bucket: str, key: str) -> S3Error:
    return S3Error(f"S3 request for s3://{bucket}/{key} failed: {_code(e)}", _code(e))


class S3Bucket:
    """Requests under one bucket and prefix. A lost race (412/409 on a condition) is raised
    as the client's own error for the caller to judge (``lost_race``); every other failure,
    after botocore's retries, as an ``S3Error`` naming the key."""

    def __init__(self, client, bucket: str, prefix: str):
        self.client, self.bucket, self.prefix = client, bucket, prefix

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _conditional(self, call, rel: str, **kw):
        """A write that may carry a condition: a lost race comes back as the client's own
        error (the caller judges it), anything else as an S3Error naming the key."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return call(Bucket=self.bucket, Key=self.key(rel), **kw)
        except ClientError as e:
            if lost_race(e):
                raise
            raise describe(e, self.bucket, self.key(rel)) from None
        except BotoCoreError as e:
            raise describe(e, self.bucket, self.key(rel)) from None

    def put(self, rel: str, data: bytes, **cond):
        return self._conditional(self.client.put_object, rel, Body=data, **cond)

    def get(self, rel: str, rng: Optional[str] = None) -> Optional[tuple[bytes, str]]:
        """(body, etag), or None when the key does not exist."""
        from botocore.exceptions import BotoCoreError, ClientError
        kw = {"Range": rng} if rng else {}
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key(rel), **kw)
            return r["Body"].read(), r.get("ETag", "")
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404") or (rng and _code(e) in ("InvalidRange",
                                                                          "416")):
                return None         # gone, or a pack shorter than its index says: missing
            raise describe(e, self.bucket, self.key(rel)) from None
        except BotoCoreError as e:
            raise describe(e, self.bucket, self.key(rel)) from None

    def list(self, rel_prefix: str) -> Iterator[tuple[str, float]]:
        """(key below the prefix, upload time) of every object under ``rel_prefix``."""
        from botocore.exceptions import BotoCoreError, ClientError
        base = self.key(rel_prefix)
        strip = len(self.key(""))
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=base):
                for o in page.get("Contents", []):
                    yield o["Key"][strip:], o["LastModified"].timestamp()
        except ClientError as e:
            raise describe(e, self.bucket, base) from None
        except BotoCoreError as e:
            raise describe(e, self.bucket, base) from None

    def upload_file(self, path: str, rel: str) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError
        cfg = TransferConfig(multipart_threshold=16 * _MiB, multipart_chunksize=16 * _MiB,
                             max_concurrency=8)
        try:
            self.client.upload_file(path, self.bucket, self.key(rel), Config=cfg)
        except (ClientError, BotoCoreError) as e:
            raise describe(e, self.bucket, self.key(rel)) from None
        except Exception as e:      # boto3's S3UploadFailedError wraps the client error
            raise S3Error(f"upload of s3://{self.bucket}/{self.key(rel)} failed: "
                          f"{type(e).__name__}") from None

    def delete(self, rel: str, **cond) -> None:
        self._conditional(self.client.delete_object, rel, **cond)
