"""Helpers shared by the benchmark corpus scripts (bench/corpus.py, bench/serve/corpus.py):
logging, digests, canonical JSON and a minimal distribution-API client that pushes blobs
and manifests over plain HTTP. Standard library only.
"""

import hashlib
import http.client
import json
import sys
import threading
import urllib.parse


def log(msg):
    print(f"corpus: {msg}", file=sys.stderr, flush=True)


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc):
    """Deterministic JSON bytes (digests are computed over exactly these bytes)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class RegistryError(Exception):
    pass


class Registry:
    """Minimal distribution API client over plain HTTP, one keep-alive connection per thread."""

    def __init__(self, host, timeout=120):
        self.host = host
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self, fresh=False):
        if fresh or getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection(self.host, timeout=self.timeout)
        return self.local.conn

    def request(self, method, path, body=None, headers=None):
        """Send one request; returns (status, headers, body). Reconnects once if the
        server closed the idle keep-alive connection."""
        for attempt in range(2):
            conn = self._conn(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.headers, resp.read()
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def has_blob(self, repo, digest):
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def push_blob(self, repo, digest, data, mount_from=None):
        """Make `repo` hold the blob: nothing when it already does, else a cross-repository
        mount when `mount_from` has it, else a monolithic upload (POST, then PUT ?digest=).
        Returns "present", "mounted" or "uploaded"."""
        if self.has_blob(repo, digest):
            return "present"
        path = f"/v2/{repo}/blobs/uploads/"
        if mount_from:
            path += "?" + urllib.parse.urlencode({"mount": digest, "from": mount_from})
        status, headers, body = self.request("POST", path, headers={"Content-Length": "0"})
        if status == 201:
            return "mounted"
        if status != 202 or not headers.get("Location"):
            raise RegistryError(f"POST upload {repo}: HTTP {status} {body[:200]!r}")
        # Location may be absolute or relative; it already carries a query (_state=...).
        url = urllib.parse.urlsplit(headers["Location"])
        path = url.path + "?" + (url.query + "&" if url.query else "")
        path += urllib.parse.urlencode({"digest": digest})
        status, _, body = self.request("PUT", path, body=data, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
        if status != 201:
            raise RegistryError(f"PUT blob {repo} {digest}: HTTP {status} {body[:200]!r}")
        return "uploaded"

    def put_manifest(self, repo, reference, media_type, data):
        """PUT a manifest under a tag or digest; check the registry's digest is ours and
        return it."""
        digest = digest_of(data)
        status, headers, body = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body=data,
            headers={"Content-Type": media_type, "Content-Length": str(len(data))})
        if status != 201:
            raise RegistryError(f"PUT manifest {repo}:{reference}: HTTP {status} {body[:300]!r}")
        got = headers.get("Docker-Content-Digest")
        if got != digest:
            raise RegistryError(f"PUT manifest {repo}:{reference}: digest {got}, expected {digest}")
        return digest
