#!/usr/bin/python3
"""The metrics listener over real HTTP, checked by real consumers.

Starts ``metrics_fixture_server`` (HttpListener on 127.0.0.1:0 with fixture
metrics and the fixture graph JSON) and checks:

* the graph page in real headless Chromium: the pods, groups and edges it drew
  (its ``#signet-drawn`` list, read back from cytoscape's computed style), that
  a live update (a second graph) was applied without moving existing nodes,
  the side panel for a selected edge, and a screenshot
  (``<build>/test-artifacts/graph.png``);
* ``/metrics`` parsed by ``promtool check metrics`` (Prometheus' own parser
  and linter) and by ``prometheus_client.parser`` (label values round-trip);
* the listener's HTTP behaviour: content types, HEAD, 404, 405, refused
  bodies, header limit, per-connection timeout, connection cap, graph routes
  off when disabled, port in use, bad address, clean exit on SIGTERM.

No root needed. Exit 0 = pass, 1 = fail, 77 = skip (loud: a tool is absent).
Environment: ``SIGNET_BUILD_DIR``, ``SIGNET_METRICS_FIXTURE_SERVER``.
"""

from __future__ import annotations

import html
import http.client
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "test" / "integration"))
import harness as H  # noqa: E402

BUILD = Path(os.environ.get("SIGNET_BUILD_DIR", REPO / "build"))
SERVER = Path(os.environ.get("SIGNET_METRICS_FIXTURE_SERVER",
                             BUILD / "test" / "metrics" / "metrics_fixture_server"))
GRAPH1 = HERE / "graph_fixture.json"
GRAPH2 = HERE / "graph_fixture_update.json"
PROMTOOL = "/usr/bin/promtool"
CHROMIUM = "/usr/bin/chromium"
ALLOWED, DENIED = "#2e7d32", "#c62828"
TIMEOUT_MS = 1500
MAX_CONNECTIONS = 8

missing: list[str] = []  # capabilities absent on this machine (-> SKIP if nothing failed)


# --------------------------------------------------------------------------
# fixture server

class Fixture:
    def __init__(self, run: H.Run, *args: str, what: str = "metrics_fixture_server"):
        self.err_path = Path(run.mkdtemp("fixture")) / "stderr"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen([str(SERVER), *args], stdout=subprocess.PIPE, stderr=self.err, text=True)
        run.own_process(self.proc, what)
        run.on_cleanup(f"close {what} stderr", self.err.close)
        self.port = None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if ready else ""
        m = re.fullmatch(r"port (\d+)\n", line)
        if m:
            self.port = int(m.group(1))

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None if it did not exit within 5 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return None


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Sends raw bytes, returns everything until the server closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def status_of(resp: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", resp)
    return int(m.group(1)) if m else 0


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Waits for the server to close s; returns the time it took, or None."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return time.monotonic() - t0
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        return time.monotonic() - t0


# --------------------------------------------------------------------------
# the graph page in headless Chromium

def edge_width(nbytes: int) -> float:
    return round(min(12.0, 1 + 1.5 * math.log10(1 + max(0, nbytes))) * 10) / 10


def group_of(graph: dict, ident: str) -> str:
    for p in graph["pods"]:
        if p["id"] == ident:
            return p["namespace"]
    for p in graph["peers"]:
        if p["id"] == ident:
            return "(node)" if p["kind"] == "node" else "(outside)"
    return "(unknown)"


def expected_drawing(graph: dict) -> set[str]:
    """The #signet-drawn lines app.js must produce for graph (group labels aside)."""
    lines = set()
    for p in graph["pods"]:
        lines.add(f"node {p['id']} parent={p['namespace']} kind=pod")
    for p in graph["peers"]:
        kind = "node" if p["kind"] == "node" else "address"
        lines.add(f"node {p['id']} parent={group_of(graph, p['id'])} kind={kind}")
    known = {p["id"] for p in graph["pods"]} | {p["id"] for p in graph["peers"]}
    for e in graph["edges"]:
        for end in (e["source"], e["target"]):
            if end not in known:
                lines.add(f"node {end} parent=(unknown) kind=unknown")
        color = DENIED if e["verdict"] == "denied" else ALLOWED
        style = "dashed" if e["verdict"] == "mixed" else "solid"
        lines.add(f"edge {e['id']} color={color} width={edge_width(e['bytes']):g} style={style} "
                  f"verdict={e['verdict']} "
                  f"source={e['source']} target={e['target']}")
    return lines


class Chromium:
    """One headless Chromium run in its own session (process group), HOME,
    profile and TMPDIR; everything it starts is killed and removed."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--mute-audio",
             "--disable-dev-shm-usage"]

    def __init__(self, test: H.Test, run: H.Run):
        self.test = test
        self.run = run

    def __call__(self, url: str, *extra: str, timeout: float = 40) -> subprocess.CompletedProcess:
        tmp = Path(self.run.mkdtemp("chromium"))
        home, profile, tdir = tmp / "home", tmp / "profile", tmp / "tmp"
        for d in (home, profile, tdir):
            d.mkdir()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "TMPDIR": str(tdir),
               "LANG": "C.UTF-8"}
        argv = [CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", *extra, url]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                start_new_session=True)
        self.run.own_process(proc, "chromium")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out, err = b"", b"(timed out)"
        finally:
            self._kill_group(proc)
            self.run.disown_process(proc)
            shutil.rmtree(tmp, ignore_errors=True)
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def _kill_group(self, proc: subprocess.Popen) -> None:
        """Kills the process group Chromium's session leader created (its
        zygote, renderer, utility processes); checks none is left."""
        pgid = proc.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if proc.poll() is None:
                    try:
                        proc.wait(0.1)
                    except subprocess.TimeoutExpired:
                        pass
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        try:
            os.killpg(pgid, 0)
            self.test.check("no Chromium process left behind", False, f"process group {pgid} still exists")
        except ProcessLookupError:
            pass


def drawn_of(dom: str) -> tuple[dict, list[str]]:
    body = re.search(r"<body([^>]*)>", dom)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))) if body else {}
    m = re.search(r'<pre id="signet-drawn"[^>]*>(.*?)</pre>', dom, re.S)
    lines = html.unescape(m.group(1)).splitlines() if m else []
    return attrs, lines


def png_info(path: Path) -> tuple[int, int, float]:
    """(width, height, share of non-zero bytes in the filtered image data).

    A blank page filters to (almost) all zeros; a drawing does not."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + n
    raw = zlib.decompress(idat)
    return width, height, sum(1 for b in raw[::97] if b) / max(1, len(raw[::97]))


def check_graph_page(t: H.Test, run: H.Run, port: int) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        t.loud(f"{CHROMIUM} not found: the graph page is NOT checked (apt-get install chromium)")
        missing.append("chromium")
        return
    g1, g2 = json.loads(GRAPH1.read_text()), json.loads(GRAPH2.read_text())
    chrome = Chromium(t, run)
    edge = "z/a>x/a"
    url = f"http://127.0.0.1:{port}/graph#edge=" + edge.replace("/", "%2F").replace(">", "%3E")

    # The fixture serves GRAPH1 to the first /api/graph request, GRAPH2 after:
    # with 7 s of virtual time the page polls at 0, 2, 4, 6 s.
    t0 = time.monotonic()
    r = chrome(url, "--virtual-time-budget=7000", "--dump-dom", "--window-size=1280,900")
    t.note(f"chromium --dump-dom took {time.monotonic() - t0:.1f} s")
    t.require("chromium --dump-dom exits 0 with a DOM", r.returncode == 0 and "<body" in r.stdout,
              f"rc={r.returncode} stderr={r.stderr[-2000:]}")
    attrs, lines = drawn_of(r.stdout)
    t.check("the page drew something (#signet-drawn is filled)", lines, r.stdout[-3000:])
    t.check("the page applied the live update (data-updates >= 2)", int(attrs.get("updates", "0")) >= 2, attrs)
    t.equal("nodes and edges drawn (data-rendered)", attrs.get("rendered"),
            f"{len(g2['pods']) + len(g2['peers']) + 1} nodes {len(g2['edges'])} edges")  # + an unknown end
    t.equal("no existing node moved on update (data-moved)", attrs.get("moved"), "0")
    t.equal("data-generated-at is the update's", attrs.get("generated-at"), g2["generatedAt"])

    drawn_elems = {re.sub(r" label=.*$", "", l) for l in lines}
    want = expected_drawing(g2)
    want |= {f"group {ns}" for ns in {p["namespace"] for p in g2["pods"]}}
    want |= {"group (outside)", "group (node)", "group (unknown)"}
    t.check("every pod, peer, group and edge drawn as expected (parents, colours, widths, dash)",
            drawn_elems == want,
            {"missing": sorted(want - drawn_elems), "unexpected": sorted(drawn_elems - want)})
    gone = [e["id"] for e in g1["edges"] if e["id"] not in {x["id"] for x in g2["edges"]}]
    t.check("edges gone in the update were removed", gone and not any(f"edge {i} " in l for i in gone
                                                                          for l in lines), gone)
    for l in lines:
        if l.startswith("edge y/c>x/a "):
            t.check("a denied edge is red", f"color={DENIED}" in l, l)
        if l.startswith("edge z/a>x/a "):
            t.check("a mixed edge is green and dashed", f"color={ALLOWED}" in l and "style=dashed" in l, l)
        if l.startswith("edge x/a>y/b "):
            t.check("edge width follows bytes (log scale) and was updated",
                    f" width={edge_width(50000):g} " in l and edge_width(50000) != edge_width(5123), l)

    # The side panel for the edge selected by the URL: its flows and deciding policies.
    panel = re.search(r'<aside id="panel"([^>]*)>(.*?)</aside>', r.stdout, re.S)
    ptext = html.unescape(re.sub(r"<[^>]+>", " ", panel.group(2))) if panel else ""
    t.check("the side panel shows the selected edge", panel and f'data-selected="edge {html.escape(edge)}"'
            in panel.group(1) and "hidden" not in panel.group(1), panel.group(1) if panel else r.stdout[-2000:])
    for needle in ("z/a → x/a", "mixed", "TCP/80", "x/allow-z", "(rule 1)", "UDP/53", "default-deny"):
        t.check(f"side panel lists {needle!r}", needle in ptext, ptext)

    # A screenshot as a test artefact.
    art = BUILD / "test-artifacts"
    art.mkdir(parents=True, exist_ok=True)
    shot = art / "graph.png"
    if shot.exists():
        shot.unlink()
    r = chrome(url, "--virtual-time-budget=5000", "--window-size=1280,900", f"--screenshot={shot}",
               "--hide-scrollbars")
    t.check("chromium --screenshot exits 0", r.returncode == 0, r.stderr[-2000:])
    if t.check("screenshot written", shot.is_file(), r.stderr[-2000:]):
        try:
            w, h, busy = png_info(shot)
        except (ValueError, zlib.error, struct.error) as e:
            t.check("screenshot is a PNG", False, repr(e))
            return
        t.equal("screenshot is 1280x900", (w, h), (1280, 900))
        t.check(f"screenshot is not blank ({shot.stat().st_size} bytes, {busy:.1%} busy)",
                shot.stat().st_size > 20000 and busy > 0.01, (shot.stat().st_size, busy))
        t.note(f"screenshot: {shot}")


# --------------------------------------------------------------------------
# /metrics through Prometheus' parsers

def check_exposition(t: H.Test, run: H.Run, port: int) -> None:
    st, hdr, body = request(port, "GET", "/metrics")
    t.equal("GET /metrics status", st, 200)
    t.equal("/metrics content type", hdr.get("content-type"), "text/plain; version=0.0.4; charset=utf-8")
    text = body.decode()
    t.check("the fixture's writer reported no errors", "\nsignet_fixture_writer_errors 0\n" in text, text[-300:])

    if os.access(PROMTOOL, os.X_OK):
        p = H.sh(PROMTOOL, "check", "metrics", input=text, check=False)
        t.check("promtool check metrics: no errors, no lint problems",
                p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(),
                f"rc={p.returncode} {p.stdout} {p.stderr}")
        # ... and promtool does reject broken text (the check above means something).
        broken = 'x_total{a="unterminated} 1\n'
        p = H.sh(PROMTOOL, "check", "metrics", input=broken, check=False)
        t.check("promtool rejects broken exposition text", p.returncode != 0, p.stdout + p.stderr)
    else:
        t.loud(f"{PROMTOOL} not found: /metrics is NOT validated by promtool (apt-get install prometheus)")
        missing.append("promtool")

    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        t.loud("prometheus_client not importable: /metrics is NOT parsed by it "
               "(apt-get install python3-prometheus-client)")
        missing.append("python3-prometheus-client")
        return
    try:
        fams = {f.name: f for f in text_string_to_metric_families(text)}
    except Exception as e:  # noqa: BLE001 - any parse error is a failure
        t.check("prometheus_client parses /metrics", False, repr(e))
        return
    t.check("prometheus_client parses /metrics", True)
    tricky = {s.labels["value"]: s.value for s in fams["signet_fixture_tricky_labels"].samples}
    t.equal("label values round-trip (backslash, quote, newline, braces, UTF-8, empty)", tricky,
            {"C:\\dir\\": 1, 'say "hi"': 2, "line1\nline2": 3, '{a="b",c}': 4, "naïve ✓": 5, "": 6,
             "\\n is not a newline": 7})
    t.equal("HELP round-trips", fams["signet_fixture_tricky_labels"].documentation,
            "Label values that need escaping: C:\\dir\\ and a\nsecond line.")
    vals = {s.labels["kind"]: s.value for s in fams["signet_fixture_values"].samples}
    t.check("special values: NaN, +Inf, -Inf, negatives, extremes",
            math.isnan(vals["nan"]) and vals["inf"] == math.inf and vals["minus_inf"] == -math.inf
            and vals["negative"] == -3.5 and vals["tiny"] == 1e-300 and vals["huge"] == 1.5e300, vals)
    flows = fams["signet_flows"]  # prometheus_client names counters without _total
    t.equal("counter type", flows.type, "counter")
    got = {(s.labels["direction"], s.labels["verdict"]): s.value for s in flows.samples}
    t.equal("counter values", got, {("ingress", "allowed"): 5123, ("ingress", "denied"): 17,
                                    ("egress", "allowed"): 9007199254740993.0})
    hist = fams["signet_nft_program_duration_seconds"]
    t.equal("histogram type", hist.type, "histogram")
    full = [s for s in hist.samples if s.labels.get("kind") == "full"]
    buckets = [(s.labels["le"], s.value) for s in full if s.name.endswith("_bucket")]
    t.check("histogram buckets are cumulative and end with +Inf = count",
            buckets and buckets[-1] == ("+Inf", 6)
            and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), buckets)
    t.equal("histogram _sum/_count", sorted((s.name, s.value) for s in full if not s.name.endswith("_bucket")),
            [("signet_nft_program_duration_seconds_count", 6), ("signet_nft_program_duration_seconds_sum", 23.02235)])
    # The handler runs per request.
    again = {f.name: f for f in text_string_to_metric_families(request(port, "GET", "/metrics")[2].decode())}
    t.check("each scrape calls the handler again",
            again["signet_fixture_scrapes"].samples[0].value == fams["signet_fixture_scrapes"].samples[0].value + 1)


# --------------------------------------------------------------------------
# HTTP behaviour and limits

def check_http(t: H.Test, run: H.Run, port: int) -> None:
    st, hdr, body = request(port, "GET", "/metrics")
    st2, hdr2, body2 = request(port, "HEAD", "/metrics")
    t.check("HEAD /metrics: 200, Content-Length like GET's, no body",
            st2 == 200 and hdr2.get("content-length") == str(len(body)) and body2 == b"", (st2, hdr2, body2))
    t.equal("GET /healthz", request(port, "GET", "/healthz")[::2], (200, b"ok\n"))
    for path in ("/", "/nope", "/metrics/x", "/graph/", "/graph/index.html", "/api/graph/x"):
        t.equal(f"GET {path} -> 404", request(port, "GET", path)[0], 404)
    for m in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        st, hdr, _ = request(port, m, "/metrics", body=b"x=1" if m in ("POST", "PUT") else None)
        t.check(f"{m} /metrics -> 405 with Allow: GET, HEAD", st == 405 and hdr.get("allow") == "GET, HEAD",
                (st, hdr))
    st, hdr, body = request(port, "GET", "/api/graph")
    t.check("GET /api/graph: application/json, the fixture (the update, by now)",
            st == 200 and hdr.get("content-type") == "application/json"
            and json.loads(body) == json.loads(GRAPH2.read_text()), (st, hdr))
    st, hdr, body = request(port, "GET", "/graph/lib.js")
    t.check("GET /graph/lib.js: the bundled cytoscape", st == 200 and b"Cytoscape Consortium" in body[:400]
            and hdr.get("content-type") == "text/javascript; charset=utf-8", (st, hdr))
    st, hdr, body = request(port, "GET", "/graph")
    t.check("GET /graph: the page, with a Content-Security-Policy",
            st == 200 and b'<script src="/graph/app.js">' in body
            and "script-src 'self'" in hdr.get("content-security-policy", ""), (st, hdr))

    resp = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    t.equal("a request body is refused (413)", status_of(resp), 413)
    resp = raw_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    t.equal("a 20 kB request header is refused (431)", status_of(resp), 431)
    resp = raw_exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))
    t.equal("not HTTP (a TLS hello) -> 400", status_of(resp), 400)
    resp = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
    t.equal("keep-alive: two responses on one connection", resp.count(b"HTTP/1.1 200 OK"), 2)

    # Per-connection timeout: an idle connection, and one sending its header
    # slowly (the deadline covers the whole request, not each byte).
    idle = socket.create_connection(("127.0.0.1", port))
    took = closed_within(idle, 6)
    idle.close()
    t.check(f"an idle connection is closed after the timeout ({TIMEOUT_MS} ms)",
            took is not None and TIMEOUT_MS / 1000 - 0.2 <= took <= TIMEOUT_MS / 1000 + 2.5, took)
    slow = socket.create_connection(("127.0.0.1", port))
    t0 = time.monotonic()
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    closed = False
    try:
        for i in range(30):
            time.sleep(0.25)
            slow.sendall(b"X-Slow-%d: y\r\n" % i)
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    took = time.monotonic() - t0
    if not closed:
        closed = closed_within(slow, 3) is not None
    slow.close()
    t.check("a slowly trickled request header is cut at the timeout", closed and took < TIMEOUT_MS / 1000 + 3.5,
            took)

    # Connection cap: MAX_CONNECTIONS idle connections are held; one more is closed at once.
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        extra = socket.create_connection(("127.0.0.1", port))
        took = closed_within(extra, TIMEOUT_MS / 1000 * 0.6)
        extra.close()
        t.check(f"connection {MAX_CONNECTIONS + 1} is closed at once (cap {MAX_CONNECTIONS})",
                took is not None and took < 0.5, took)
    finally:
        for s in held:
            s.close()
    ok = False
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not ok:
        try:
            ok = request(port, "GET", "/healthz")[0] == 200
        except OSError:
            time.sleep(0.05)
    t.check("once connections close, new ones are served again", ok)


def check_instances(t: H.Test, run: H.Run, port: int) -> None:
    nog = Fixture(run, "--no-graph", what="metrics_fixture_server --no-graph")
    t.require("fixture server (graph disabled) starts", nog.port, nog.stderr())
    for path in ("/graph", "/graph/app.js", "/graph/lib.js", "/api/graph"):
        t.equal(f"graph disabled: {path} -> 404", request(nog.port, "GET", path)[0], 404)
    t.equal("graph disabled: /metrics still served", request(nog.port, "GET", "/metrics")[0], 200)
    t.equal("graph disabled: exits 0 on SIGTERM", nog.stop(), 0)

    busy = Fixture(run, "--address", f"127.0.0.1:{port}", what="metrics_fixture_server (port in use)")
    rc = busy.proc.wait(5)
    t.check("a port in use: a clear error, exit 1",
            rc == 1 and f"cannot listen on 127.0.0.1:{port}: port {port} is already in use" in busy.stderr(),
            (rc, busy.stderr()))
    bad = Fixture(run, "--address", "localhost:9464", what="metrics_fixture_server (bad address)")
    rc = bad.proc.wait(5)
    t.check("a bad address: a clear error, exit 1",
            rc == 1 and 'invalid listen address "localhost:9464"' in bad.stderr(), (rc, bad.stderr()))


def body(t: H.Test, run: H.Run) -> None:
    if not os.access(SERVER, os.X_OK):
        t.loud(f"fixture server missing (build it: ninja -C <build> test/metrics/metrics_fixture_server): {SERVER}")
        t.require("metrics_fixture_server is built", False, str(SERVER))
    fx = Fixture(run, "--graph", str(GRAPH1), "--graph", str(GRAPH2), "--max-connections", str(MAX_CONNECTIONS),
                 "--timeout-ms", str(TIMEOUT_MS))
    t.require("fixture server starts and prints its port", fx.port, fx.stderr())
    t0 = time.monotonic()
    check_graph_page(t, run, fx.port)  # first: it must see the first graph, then the update
    t1 = time.monotonic()
    check_exposition(t, run, fx.port)
    check_http(t, run, fx.port)
    check_instances(t, run, fx.port)
    t.note(f"graph page {t1 - t0:.1f} s, the rest {time.monotonic() - t1:.1f} s")
    t.equal("the fixture server exits 0 on SIGTERM", fx.stop(), 0)
    t.equal("the fixture server wrote nothing to stderr", fx.stderr(), "")
    if missing and not t.failed:
        H.skip("absent on this machine, so not checked: " + ", ".join(missing) + " (see above)")


if __name__ == "__main__":
    H.main("test_metrics_http", body)
