#!/usr/bin/python3
"""A fake InfluxDB 2.x write endpoint, for test_influxdb2_fake.cpp.

InfluxDB 2.x cannot run on the test machines: Debian 12 has no influxdb2
package (``apt-cache policy influxdb2`` shows no candidate) and the tests
download nothing. This server implements ``POST /api/v2/write`` as the
InfluxDB 2 API reference documents it:

* query: ``org`` (or ``orgID``), ``bucket`` (required), ``precision``
  (ns, us, ms, s; default ns);
* ``Authorization: Token <token>``, else 401
  ``{"code":"unauthorized","message":"unauthorized access"}``;
* unknown org or bucket: 404 ``{"code":"not found","message":...}``;
* ``Content-Encoding: gzip`` or identity (anything else: 415);
* line protocol that does not parse: 400 ``{"code":"invalid",...}``;
* points older than the bucket's retention: the others are written and the
  answer is 422 ``{"code":"unprocessable entity","message":"failure writing
  points to database: partial write: points beyond retention policy
  dropped=N"}``;
* success: 204 No Content.

Test control (not part of InfluxDB): ``GET /test/requests`` returns what was
received; ``POST /test/fail?status=503&count=1&retry_after=1`` makes the next
``count`` writes fail with ``status`` (and a Retry-After header).

Prints ``PORT <n>`` on stdout once listening on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
WRITES: list[dict] = []      # accepted write requests (also partial ones)
ATTEMPTS: list[dict] = []    # every write request: time and answer
FAILS: list[tuple[int, str]] = []
ARGS = None


def parse_line(line: str) -> int | None:
    """Minimal line-protocol check; returns the timestamp (ns) or None when absent.
    Raises ValueError on a malformed line."""
    # measurement[,tags] fields [timestamp]; spaces inside quoted strings and escapes skipped.
    parts, cur, quoted, i = [], "", False, 0
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            cur += line[i:i + 2]
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == " " and not quoted:
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    if quoted or len(parts) not in (2, 3) or not parts[0] or "=" not in parts[1]:
        raise ValueError("missing fields")
    if len(parts) == 3:
        return int(parts[2])
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def reply(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/test/requests":
            with LOCK:
                self.reply(200, {"writes": WRITES, "attempts": ATTEMPTS})
        elif url.path == "/health":
            self.reply(200, {"name": "influxdb", "status": "pass"})
        else:
            self.reply(404, {"code": "not found", "message": "path not found"})

    def do_POST(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        q = parse_qs(url.query, keep_blank_values=True)
        if url.path == "/test/fail":
            with LOCK:
                for _ in range(int(q["count"][0])):
                    FAILS.append((int(q["status"][0]), q.get("retry_after", [""])[0]))
            self.reply(204)
            return
        if url.path != "/api/v2/write":
            self.reply(404, {"code": "not found", "message": "path not found"})
            return
        status, answer, headers = self.write(url, q, body)
        with LOCK:
            ATTEMPTS.append({"time": time.monotonic(), "status": status})
        self.reply(status, answer, headers)

    def write(self, url, q, body):
        with LOCK:
            fail = FAILS.pop(0) if FAILS else None
        if fail:
            status, retry_after = fail
            headers = {"Retry-After": retry_after} if retry_after else {}
            return status, {"code": "unavailable", "message": "service unavailable"}, headers
        if self.headers.get("Authorization") != f"Token {ARGS.token}":
            return 401, {"code": "unauthorized", "message": "unauthorized access"}, {}
        org = (q.get("org") or q.get("orgID") or [""])[0]
        bucket = (q.get("bucket") or [""])[0]
        if not bucket:
            return 400, {"code": "invalid", "message": "bucket not specified"}, {}
        if org != ARGS.org:
            return 404, {"code": "not found", "message": f'organization name "{org}" not found'}, {}
        if bucket != ARGS.bucket:
            return 404, {"code": "not found", "message": f'bucket "{bucket}" not found'}, {}
        precision = (q.get("precision") or ["ns"])[0]
        if precision not in ("ns", "us", "ms", "s"):
            return 400, {"code": "invalid", "message": f'invalid precision "{precision}"'}, {}
        encoding = self.headers.get("Content-Encoding", "identity")
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except Exception as e:  # noqa: BLE001
                return 400, {"code": "invalid", "message": f"failed to decompress: {e}"}, {}
        elif encoding != "identity":
            return 415, {"code": "unsupported media type", "message": f"unsupported encoding {encoding}"}, {}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return 400, {"code": "invalid", "message": "body is not UTF-8"}, {}
        lines = [line for line in text.split("\n") if line]
        limit = (time.time() - ARGS.retention_seconds) * 1e9
        kept, dropped = [], 0
        for line in lines:
            try:
                ts = parse_line(line)
            except ValueError as e:
                return 400, {"code": "invalid", "message": f"unable to parse '{line}': {e}"}, {}
            if ts is not None and precision == "ns" and ts < limit:
                dropped += 1
            else:
                kept.append(line)
        with LOCK:
            WRITES.append({
                "path": url.path,
                "query": url.query,
                "args": {k: v for k, v in q.items()},
                "authorization": self.headers.get("Authorization"),
                "content_encoding": self.headers.get("Content-Encoding"),
                "content_type": self.headers.get("Content-Type"),
                "lines": kept,
            })
        if dropped:
            return 422, {"code": "unprocessable entity",
                         "message": "failure writing points to database: partial write: "
                                    f"points beyond retention policy dropped={dropped}"}, {}
        return 204, None, {}


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--token", required=True)
    p.add_argument("--org", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--retention-seconds", type=int, default=3600)
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
