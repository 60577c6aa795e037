#!/usr/bin/env python3
"""Checks signet's Grafana dashboards and the InfluxDB + Grafana add-on.

Usage: test_dashboards.py [SOURCE_ROOT]   (default: two folders up from this file)

Offline, always:
  - manifests/grafana/*.json parse, are Grafana 9/10 dashboards (schemaVersion,
    uid, title, description), panel ids are unique, panels do not overlap,
    every datasource reference is the variable ${DS_SIGNET_INFLUXDB} (a
    datasource variable of type influxdb), every template variable used
    exists, $timeFilter is in every query, GROUP BY time() uses $__interval
    and fill();
  - every InfluxQL query (panels, variables, annotations) is parsed by the
    small parser below and may only use the measurements, tags and fields
    docs/influxdb.md documents (signet_flow, signet_pod_event): identifiers
    double-quoted ("policy" is a keyword), tags only compared with strings or
    regexes (and with documented values), functions only on fields of the
    right type, GROUP BY only on tags, aliases ($tag_x) only of grouped tags;
  - the add-on (manifests/addons/influxdb-grafana) and manifests/grafana/
    kustomization.yaml parse (PyYAML) with the right kinds, ports, images,
    volumes and security contexts; the Grafana provisioning (datasource URL
    and database, dashboards path) agrees with the InfluxDB Service and the
    Deployment's mounts; the dashboards ConfigMap generator lists exactly the
    JSON files; the signetd components only add flags signetd accepts
    (controller/main.cpp) and the --influxdb URL names the add-on's Service;
  - with kubectl (offline `kubectl kustomize`): the add-on builds, the
    dashboards ConfigMap holds the JSON files byte for byte under their file
    names, the Grafana Deployment mounts the generated (hash-suffixed)
    ConfigMaps, and an overlay of manifests/ with both components builds with
    the flags on the signetd container.

Live, when /usr/bin/influxd exists (SIGNET_INFLUXD overrides the path):
  starts a private influxd on free 127.0.0.1 ports with its data in a temp
  dir, writes realistic signet_flow and signet_pod_event points over /write,
  and runs EVERY dashboard query over /query, twice (template variables as
  "All" = .*, and as concrete values), with $timeFilter = time > now() - 1h,
  $__interval = 10s; asserts no InfluxQL error, that every panel returns rows,
  and a few values. influxd and its folder are removed on exit, also on
  failure. Without influxd this part is skipped with a loud message.
Exit status 0 when everything holds; 1 with one line per problem otherwise.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

# The loopback-only influxd config shared with the integration tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from harness import influxd_config  # noqa: E402

try:
    import yaml
except ImportError:
    print("test_dashboards.py: needs PyYAML: apt-get install python3-yaml", file=sys.stderr)
    sys.exit(1)

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
GRAFANA = os.path.join(ROOT, "manifests", "grafana")
ADDON = os.path.join(ROOT, "manifests", "addons", "influxdb-grafana")
NAMESPACE = "signet-system"
DS_VAR = "DS_SIGNET_INFLUXDB"
DS_REF = {"type": "influxdb", "uid": "${%s}" % DS_VAR}
EXPECTED_DASHBOARDS = {"signet-flows.json", "signet-denials.json", "signet-namespaces.json"}
MAX_PANELS = 10

# docs/influxdb.md, "Measurements".
SCHEMA = {
    "signet_flow": {
        "tags": {"node", "direction", "verdict", "local_namespace", "local_pod", "peer_kind", "peer_namespace",
                 "peer_pod", "proto", "port", "policy", "authenticated"},
        "fields": {"connections": "int", "packets_out": "int", "bytes_out": "int", "packets_in": "int",
                   "bytes_in": "int", "first_seen_ns": "int", "last_seen_ns": "int", "src": "string", "dst": "string"},
    },
    "signet_pod_event": {
        "tags": {"node", "namespace", "pod", "event"},
        "fields": {"uid": "string", "ips": "string", "labels": "string"},
    },
}
TAG_VALUES = {
    "direction": {"ingress", "egress"},
    "verdict": {"allowed", "denied"},
    "peer_kind": {"pod", "address", "node"},
    "proto": {"TCP", "UDP", "SCTP", "ICMP", "ICMPv6"},
    "authenticated": {"true", "false"},
    "event": {"start", "stop"},
}
BUILTIN_VARS = {"timeFilter", "__interval", "__interval_ms"}

problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


# ------------------------------------------------------------------ InfluxQL

class QueryError(Exception):
    pass


TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<qident>"(?:[^"\\]|\\.)*")
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<var>\$\{[A-Za-z0-9_]+(?::[a-z]+)?\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_]+\]\])
  | (?P<duration>\d+(?:ns|us|µs|ms|s|m|h|d|w)\b)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>=~|!~|!=|<>|<=|>=|[=<>+\-*/%(),;.])
""", re.X)
REGEX_RE = re.compile(r"/(?:[^/\\\n]|\\.)*/")
KEYWORDS = {"select", "from", "where", "and", "or", "group", "by", "fill", "order", "asc", "desc", "limit",
            "slimit", "offset", "soffset", "as", "show", "tag", "values", "with", "key", "in", "null", "none",
            "previous", "linear", "tz"}
AGGREGATES = {"sum", "mean", "count", "median", "spread", "stddev", "integral"}
SELECTORS = {"top", "bottom", "max", "min", "first", "last"}
NUMERIC_ONLY = {"sum", "mean", "median", "spread", "stddev", "integral", "top", "bottom", "max", "min"}


def tokenize(q):
    """(kind, value) tokens; a regex literal is read where an operand follows =~ or !~."""
    out = []
    pos = 0
    while pos < len(q):
        if out and out[-1] == ("op", "=~") or out and out[-1] == ("op", "!~"):
            while pos < len(q) and q[pos].isspace():
                pos += 1
            m = REGEX_RE.match(q, pos)
            if not m:
                raise QueryError(f"regex literal expected at {q[pos:pos + 20]!r}")
            out.append(("regex", m.group(0)[1:-1]))
            pos = m.end()
            continue
        m = TOKEN_RE.match(q, pos)
        if not m:
            raise QueryError(f"cannot read {q[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind == "ws":
            continue
        text = m.group(0)
        if kind == "qident":
            out.append(("ident", text[1:-1].replace('\\"', '"')))
        elif kind == "string":
            out.append(("string", text[1:-1].replace("\\'", "'")))
        elif kind == "word":
            low = text.lower()
            if low in KEYWORDS:
                out.append(("kw", low))
            else:
                out.append(("bare", text))
        else:
            out.append((kind, text))
    return out


class Parser:
    """A recursive-descent parser for the InfluxQL the dashboards use:
    SELECT ... FROM "m" | (subquery) [WHERE] [GROUP BY] [fill] [ORDER BY time]
    [LIMIT] [SLIMIT], and SHOW TAG VALUES FROM "m" WITH KEY ... [WHERE]."""

    def __init__(self, tokens):
        self.t = tokens
        self.i = 0

    def peek(self, k=0):
        return self.t[self.i + k] if self.i + k < len(self.t) else ("eof", "")

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, kind, value=None):
        tok = self.peek()
        if tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return tok
        return None

    def expect(self, kind, value=None):
        tok = self.accept(kind, value)
        if not tok:
            raise QueryError(f"expected {value or kind}, found {self.peek()[1]!r}")
        return tok

    def statement(self):
        if self.accept("kw", "show"):
            node = self.show()
        else:
            node = self.select()
        self.accept("op", ";")
        if self.peek()[0] != "eof":
            raise QueryError(f"unexpected {self.peek()[1]!r} after the statement")
        return node

    def show(self):
        self.expect("kw", "tag")
        self.expect("kw", "values")
        self.expect("kw", "from")
        meas = self.ident()
        self.expect("kw", "with")
        self.expect("kw", "key")
        keys = []
        if self.accept("kw", "in"):
            self.expect("op", "(")
            keys.append(self.ident())
            while self.accept("op", ","):
                keys.append(self.ident())
            self.expect("op", ")")
        else:
            self.expect("op", "=")
            keys.append(self.ident())
        where = self.condition() if self.accept("kw", "where") else None
        return {"kind": "show", "from": meas, "keys": keys, "where": where}

    def ident(self):
        tok = self.take()
        if tok[0] == "ident":
            return tok[1]
        if tok[0] == "bare":
            raise QueryError(f"identifier {tok[1]} must be double-quoted (\"{tok[1]}\")")
        if tok[0] == "kw":
            raise QueryError(f"{tok[1]!r} is an InfluxQL keyword: double-quote it as an identifier")
        raise QueryError(f"identifier expected, found {tok[1]!r}")

    def select(self):
        self.expect("kw", "select")
        fields = [self.field()]
        while self.accept("op", ","):
            fields.append(self.field())
        self.expect("kw", "from")
        if self.accept("op", "("):
            source = {"subquery": self.select()}
            self.expect("op", ")")
        else:
            source = {"measurement": self.ident()}
        node = {"kind": "select", "fields": fields, "source": source, "where": None, "group": [],
                "group_time": None, "fill": None, "order": None, "limit": None}
        if self.accept("kw", "where"):
            node["where"] = self.condition()
        if self.accept("kw", "group"):
            self.expect("kw", "by")
            while True:
                if self.peek() == ("bare", "time") and self.peek(1) == ("op", "("):
                    self.take()
                    self.take()
                    node["group_time"] = self.expect("duration")[1]
                    self.expect("op", ")")
                else:
                    node["group"].append(self.ident())
                if not self.accept("op", ","):
                    break
        if self.accept("kw", "fill"):
            self.expect("op", "(")
            tok = self.take()
            if tok[0] not in ("number", "kw"):
                raise QueryError(f"fill({tok[1]}) is not a fill option")
            node["fill"] = tok[1]
            self.expect("op", ")")
        if self.accept("kw", "order"):
            self.expect("kw", "by")
            if self.take() != ("bare", "time"):
                raise QueryError("ORDER BY takes only time")
            node["order"] = (self.accept("kw", "desc") or self.accept("kw", "asc") or ("kw", "asc"))[1]
        for kw in ("limit", "slimit"):
            if self.accept("kw", kw):
                node[kw] = int(self.expect("number")[1])
        return node

    def field(self):
        expr = self.expr()
        alias = self.ident() if self.accept("kw", "as") else None
        return {"expr": expr, "alias": alias}

    def expr(self):
        node = self.term()
        while self.peek()[0] == "op" and self.peek()[1] in "+-*/%":
            op = self.take()[1]
            node = {"op": op, "l": node, "r": self.term()}
        return node

    def term(self):
        tok = self.peek()
        if tok[0] == "op" and tok[1] == "(":
            self.take()
            e = self.expr()
            self.expect("op", ")")
            return e
        if tok[0] in ("number", "duration", "string"):
            self.take()
            return {tok[0]: tok[1]}
        if tok[0] == "bare" and self.peek(1) == ("op", "("):
            self.take()
            self.take()
            args = []
            if not self.accept("op", ")"):
                args.append(self.expr())
                while self.accept("op", ","):
                    args.append(self.expr())
                self.expect("op", ")")
            return {"call": tok[1].lower(), "args": args}
        if tok[0] == "bare" and tok[1] == "time":
            self.take()
            return {"time": True}
        return {"ident": self.ident()}

    def condition(self):
        node = self.conjunction()
        while self.accept("kw", "or"):
            node = {"bool": "or", "l": node, "r": self.conjunction()}
        return node

    def conjunction(self):
        node = self.predicate()
        while self.accept("kw", "and"):
            node = {"bool": "and", "l": node, "r": self.predicate()}
        return node

    def predicate(self):
        # A parenthesised condition, or "operand op operand".
        if self.peek() == ("op", "("):
            save = self.i
            self.take()
            try:
                inner = self.condition()
                self.expect("op", ")")
                if self.peek()[0] == "op" and self.peek()[1] in ("=", "!=", "<>", "<", ">", "<=", ">=", "=~", "!~"):
                    raise QueryError("not a condition")
                return inner
            except QueryError:
                self.i = save
        left = self.expr()
        tok = self.take()
        if tok[0] != "op" or tok[1] not in ("=", "!=", "<>", "<", ">", "<=", ">=", "=~", "!~"):
            raise QueryError(f"comparison expected, found {tok[1]!r}")
        if tok[1] in ("=~", "!~"):
            right = {"regex": self.expect("regex")[1]}
        else:
            right = self.expr()
        return {"cmp": tok[1], "l": left, "r": right}


def parse_influxql(q):
    return Parser(tokenize(q)).statement()


def check_select(node, where):
    """Semantic checks of a parsed SELECT against SCHEMA. Returns the names
    (aliases and grouped tags) it offers to an outer query."""
    src = node["source"]
    if "subquery" in src:
        inner = check_select(src["subquery"], where)
        tags = set(inner["tags"])
        fields = {a: "int" for a in inner["aliases"]}
    else:
        meas = src["measurement"]
        if meas not in SCHEMA:
            raise QueryError(f"measurement {meas!r} is not one signetd writes")
        tags = SCHEMA[meas]["tags"]
        fields = SCHEMA[meas]["fields"]

    aliases = []
    uses_aggregate = False
    bare_tags = []

    def walk(e, in_func=None):
        nonlocal uses_aggregate
        if "ident" in e:
            name = e["ident"]
            if name in fields:
                if in_func in NUMERIC_ONLY and fields[name] != "int":
                    raise QueryError(f"{in_func}() of the string field {name!r}")
            elif name in tags:
                if in_func:
                    raise QueryError(f"{in_func}() of tag {name!r}: functions take fields")
                bare_tags.append(name)
            else:
                raise QueryError(f"{name!r} is neither a tag nor a field here")
        elif "call" in e:
            fn = e["call"]
            if fn not in AGGREGATES | SELECTORS | {"distinct"}:
                raise QueryError(f"function {fn}() is not expected")
            if fn in AGGREGATES:
                uses_aggregate = True
            if fn in ("top", "bottom"):
                if len(e["args"]) != 2 or "number" not in e["args"][1]:
                    raise QueryError(f"{fn}(field, N) expected")
                walk(e["args"][0], fn)
                return
            if len(e["args"]) != 1:
                raise QueryError(f"{fn}() takes one argument")
            arg = e["args"][0]
            if "call" in arg:
                if not (fn == "count" and arg["call"] == "distinct"):
                    raise QueryError(f"{fn}({arg['call']}()) is not expected")
                walk(arg, None)
            elif "ident" in arg:
                walk(arg, fn)
            else:
                raise QueryError(f"{fn}() needs a field")
        elif "op" in e:
            walk(e["l"], in_func)
            walk(e["r"], in_func)
        elif "time" in e:
            raise QueryError("time is selected implicitly")
        # numbers: fine

    for f in node["fields"]:
        walk(f["expr"])
        if f["alias"]:
            aliases.append(f["alias"])
    if len(set(aliases)) != len(aliases):
        raise QueryError(f"repeated aliases {aliases}")
    has_top = any("call" in f["expr"] and f["expr"]["call"] in ("top", "bottom") for f in node["fields"])
    if uses_aggregate and bare_tags and not has_top:
        raise QueryError(f"tags {bare_tags} selected next to an aggregate")
    if node["where"] is not None:
        check_condition(node["where"], tags, fields)
    for g in node["group"]:
        if g not in tags:
            raise QueryError(f"GROUP BY {g!r}: not a tag" + (" (fields cannot be grouped)" if g in fields else ""))
    if node["group_time"] and not uses_aggregate and not any(
            "call" in f["expr"] or "op" in f["expr"] for f in node["fields"]):
        raise QueryError("GROUP BY time() without an aggregate")
    if node["order"] == "desc" and node["limit"] is None:
        raise QueryError("ORDER BY time DESC without LIMIT")
    return {"tags": list(node["group"]), "aliases": aliases}


def check_condition(c, tags, fields):
    if "bool" in c:
        check_condition(c["l"], tags, fields)
        check_condition(c["r"], tags, fields)
        return
    left, right, op = c["l"], c["r"], c["cmp"]
    if "time" in left:
        if op not in ("<", ">", "<=", ">="):
            raise QueryError("time is compared with < or >")
        return
    if "ident" not in left:
        raise QueryError("a condition starts with a tag or time")
    name = left["ident"]
    if name in fields:
        raise QueryError(f"condition on field {name!r}: filter on tags")
    if name not in tags:
        raise QueryError(f"condition on {name!r}: not a tag here")
    if op in ("=~", "!~"):
        if "regex" not in right:
            raise QueryError(f"{name} {op} needs a /regex/")
        try:
            re.compile(right["regex"].replace("\\/", "/"))
        except re.error as e:
            raise QueryError(f"bad regex /{right['regex']}/: {e}")
        return
    if op not in ("=", "!=", "<>") or "string" not in right:
        raise QueryError(f"tag {name!r} compared with {op} to a non-string: tags are strings")
    if name in TAG_VALUES and right["string"] not in TAG_VALUES[name]:
        raise QueryError(f"{name} = {right['string']!r}: signetd writes only {sorted(TAG_VALUES[name])}")


def check_show(node):
    meas = node["from"]
    if meas not in SCHEMA:
        raise QueryError(f"measurement {meas!r} is not one signetd writes")
    for k in node["keys"]:
        if k not in SCHEMA[meas]["tags"]:
            raise QueryError(f"SHOW TAG VALUES of {k!r}: not a tag of {meas}")
    if node["where"] is not None:
        check_condition(node["where"], SCHEMA[meas]["tags"], SCHEMA[meas]["fields"])


def analyse(q):
    node = parse_influxql(q)
    if node["kind"] == "show":
        check_show(node)
        return node
    check_select(node, q)
    return node


def substitute(q, values, interval="10s", interval_ms="10000"):
    """What Grafana sends: $timeFilter, $__interval(_ms), and template
    variables (values[name] is a regex fragment, already escaped)."""
    q = q.replace("$timeFilter", "time > now() - 1h")
    q = q.replace("$__interval_ms", interval_ms).replace("${__interval_ms}", interval_ms)
    q = q.replace("$__interval", interval).replace("${__interval}", interval)

    def var(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise QueryError(f"unknown variable ${name}")
        return values[name]
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]", var, q)


def regex_escape(v):
    """Grafana's escapeRegex (what it does for multi/All variables)."""
    return re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", v)


# ------------------------------------------------------------------ dashboards

def queries_of(d):
    """(where, query, kind, grouped-tags-for-alias-check, target) of a dashboard."""
    out = []
    for p in d.get("panels") or []:
        for t in p.get("targets") or []:
            out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", t.get("query"), "panel", p, t))
    for v in (d.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            q = v.get("query")
            if isinstance(q, dict):
                q = q.get("query")
            out.append((f"variable {v.get('name')}", q, "variable", v, None))
    for a in (d.get("annotations") or {}).get("list") or []:
        if a.get("builtIn"):
            continue
        out.append((f"annotation {a.get('name')!r}", a.get("query"), "annotation", a, None))
    return out


def variables_in(q):
    return set(m.group(1) or m.group(2) or m.group(3)
               for m in re.finditer(r"\$\{([A-Za-z0-9_]+)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)|\[\[([A-Za-z0-9_]+)\]\]", q))


def walk_json(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield path + "/" + k, k, v
            yield from walk_json(v, path + "/" + k)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from walk_json(v, f"{path}/{i}")


def check_dashboard(name, d, uids):
    w = name
    for field in ("uid", "title", "description"):
        if not isinstance(d.get(field), str) or not d.get(field):
            problem(w, f"{field} missing")
    if d.get("uid") in uids:
        problem(w, f"uid {d.get('uid')!r} also in {uids[d.get('uid')]}")
    uids[d.get("uid")] = name
    if not isinstance(d.get("schemaVersion"), int) or not 36 <= d["schemaVersion"] <= 41:
        problem(w, f"schemaVersion {d.get('schemaVersion')!r}: Grafana 9/10 use 36..39")
    if "signet" not in (d.get("tags") or []):
        problem(w, "tag 'signet' missing (the dashboards link each other by it)")
    if d.get("id") is not None:
        problem(w, "id must be null (Grafana assigns it)")
    if "__inputs" in d:
        problem(w, "__inputs: use the datasource variable, which both provisioning and import understand")

    variables = {}
    for v in (d.get("templating") or {}).get("list") or []:
        if v.get("name") in variables:
            problem(w, f"variable {v.get('name')} defined twice")
        variables[v.get("name")] = v
    ds = variables.get(DS_VAR)
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "influxdb":
        problem(w, f"templating: a datasource variable {DS_VAR} with query 'influxdb' is required")
    for v in variables.values():
        if v.get("type") == "query":
            if v.get("datasource") != DS_REF:
                problem(w, f"variable {v.get('name')}: datasource must be {DS_REF}")
            if v.get("includeAll") and v.get("allValue") != ".*":
                problem(w, f"variable {v.get('name')}: allValue '.*' expected (regex filters)")

    # Every datasource reference is the variable.
    for path, key, value in walk_json(d):
        if key != "datasource":
            continue
        if isinstance(value, dict) and value.get("uid") == "-- Grafana --" and "/annotations/" in path:
            continue
        if value != DS_REF:
            problem(w, f"{path}: datasource {value!r} is not {DS_REF}")

    panels = d.get("panels") or []
    if not 3 <= len(panels) <= MAX_PANELS:
        problem(w, f"{len(panels)} panels: keep between 3 and {MAX_PANELS}")
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or any(not isinstance(i, int) for i in ids):
        problem(w, f"panel ids must be unique integers: {ids}")
    cells = {}
    for p in panels:
        pw = f"{w} panel {p.get('id')}"
        if p.get("type") == "row":
            problem(pw, "rows are not used")
        for field in ("title", "description", "type"):
            if not p.get(field):
                problem(pw, f"{field} missing")
        if p.get("datasource") != DS_REF:
            problem(pw, f"datasource must be {DS_REF}")
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
            problem(pw, f"gridPos {g} is not within 24 columns")
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problem(pw, f"overlaps panel {cells[(x, y)]}")
                    break
                cells[(x, y)] = p.get("id")
            else:
                continue
            break
        targets = p.get("targets") or []
        if not targets:
            problem(pw, "no query")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            problem(pw, f"refIds repeat: {refs}")
        for t in targets:
            if t.get("datasource") != DS_REF:
                problem(pw, f"target {t.get('refId')}: datasource must be {DS_REF}")
            if t.get("rawQuery") is not True or not isinstance(t.get("query"), str):
                problem(pw, f"target {t.get('refId')}: a raw InfluxQL query expected")
            if t.get("resultFormat") not in ("time_series", "table"):
                problem(pw, f"target {t.get('refId')}: resultFormat {t.get('resultFormat')!r}")
            if p.get("type") == "table" and t.get("resultFormat") != "table":
                problem(pw, "a table panel wants resultFormat table")
            if p.get("type") == "timeseries" and t.get("resultFormat") != "time_series":
                problem(pw, "a time series panel wants resultFormat time_series")

    checked = 0
    for where, q, kind, owner, target in queries_of(d):
        qw = f"{w} {where}"
        if not isinstance(q, str) or not q.strip():
            problem(qw, "empty query")
            continue
        used = variables_in(q)
        for v in used:
            if v not in variables and v not in BUILTIN_VARS:
                problem(qw, f"${v} is not a variable of this dashboard")
        try:
            raw_regexes = [v for k, v in tokenize(q) if k == "regex"]
        except QueryError:
            raw_regexes = []  # reported by analyse() below
        for rx in raw_regexes:
            if re.search(r"\$[A-Za-z_{]", rx) and not re.fullmatch(r"\^\$[A-Za-z_][A-Za-z0-9_]*\$", rx):
                problem(qw, f"variable regex /{rx}/: use /^$var$/ (Grafana escapes the values)")
        if kind != "variable" and "$timeFilter" not in q:
            problem(qw, "$timeFilter missing")
        for m in re.finditer(r"GROUP BY time\(([^)]*)\)", q):
            if m.group(1) != "$__interval":
                problem(qw, f"GROUP BY time({m.group(1)}): use $__interval")
            if not re.search(r"\bfill\(", q):
                problem(qw, "GROUP BY time() without fill()")
        if "$__interval_ms" in q and "GROUP BY time($__interval)" not in q:
            problem(qw, "$__interval_ms (per-second rate) without GROUP BY time($__interval)")
        if kind == "panel" and owner.get("type") == "timeseries" and "GROUP BY time(" not in q:
            problem(qw, "a time series panel without GROUP BY time($__interval)")
        try:
            node = analyse(substitute(q, {k: ".*" for k in variables}))
        except QueryError as e:
            problem(qw, f"{e}  [{q}]")
            continue
        checked += 1
        if target is not None:
            grouped = set(node.get("group") or [])
            for tag in re.findall(r"\$tag_([A-Za-z0-9_]+)", target.get("alias") or ""):
                if tag not in grouped:
                    problem(qw, f"alias uses $tag_{tag}, which the query does not GROUP BY")
    return checked


def load_dashboards():
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(GRAFANA, "*.json")))
    if set(found) != EXPECTED_DASHBOARDS:
        problem("manifests/grafana", f"dashboards {found}, expected {sorted(EXPECTED_DASHBOARDS)}")
    out = {}
    for f in found:
        try:
            with open(os.path.join(GRAFANA, f), encoding="utf-8") as fh:
                out[f] = json.load(fh)
        except (OSError, ValueError) as e:
            problem(f, f"does not parse: {e}")
    return out


def check_dashboard_content(dash):
    """What issue #6 asks each dashboard to show."""
    def titles(name):
        return {p.get("title") for p in (dash.get(name) or {}).get("panels") or []}

    def text(name):
        return json.dumps(dash.get(name) or {})

    def var_names(name):
        return {v.get("name") for v in ((dash.get(name) or {}).get("templating") or {}).get("list") or []}
    need = {
        "signet-flows.json": ["Connections by pod and direction", "Bytes by pod and direction",
                              "Top talkers (pod pairs by bytes)", "Recent flows"],
        "signet-denials.json": ["Denied attempts by policy", "Denied attempts by pod", "All denied flows by policy",
                                "Top denied peers"],
        "signet-namespaces.json": ["Bytes between namespaces (pod to pod)",
                                   "Allowed vs denied connections per namespace", "Pod start/stop events"],
    }
    for name, wanted in need.items():
        for t in wanted:
            if t not in titles(name):
                problem(name, f"panel {t!r} missing")
    for name in need:
        for v in ("node", "namespace"):
            if v not in var_names(name):
                problem(name, f"variable {v} missing")
    if "signet_pod_event" not in json.dumps([a for a in ((dash.get("signet-namespaces.json") or {}).get("annotations") or {}).get("list", []) if not a.get("builtIn")]):
        problem("signet-namespaces.json", "pod start/stop annotations from signet_pod_event missing")
    if "default-deny" not in text("signet-denials.json"):
        problem("signet-denials.json", "no mention of default-deny")


# ------------------------------------------------------------------ add-on YAML

def load_yaml_docs(path, where):
    try:
        with open(path) as fh:
            return [d for d in yaml.safe_load_all(fh) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        problem(where, f"does not parse: {e}")
        return []


def container_ports(pod_spec):
    return {p.get("name"): p.get("containerPort") for c in pod_spec.get("containers") or [] for p in c.get("ports") or []}


def check_restricted(where, pod):
    """Pod Security "restricted" (the add-on does not need more, although
    signet-system is a privileged namespace for the node agent)."""
    psc = pod.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] == 0:
        problem(where, "pod securityContext: runAsNonRoot with a non-zero runAsUser expected")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problem(where, "pod securityContext: seccompProfile RuntimeDefault expected")
    if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
        problem(where, "no host namespaces")
    if pod.get("automountServiceAccountToken") is not False:
        problem(where, "automountServiceAccountToken: false expected (no API access needed)")
    for c in pod.get("containers") or []:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(cw, "allowPrivilegeEscalation: false expected")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get("add"):
            problem(cw, "capabilities: drop [ALL], add nothing")
        if sc.get("privileged"):
            problem(cw, "must not be privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(cw, "readOnlyRootFilesystem: true expected")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    problem(cw, f"resources.{part}.{r} missing")
        for probe in ("readinessProbe", "livenessProbe"):
            if not c.get(probe):
                problem(cw, f"{probe} missing")
        for e in c.get("env") or []:
            if "value" in e and not isinstance(e["value"], str):
                problem(cw, f"env {e.get('name')}: {e['value']!r} is not a string (quote it)")


def check_service(where, svc, deploy, port):
    spec = svc.get("spec") or {}
    if spec.get("type", "ClusterIP") != "ClusterIP" or spec.get("clusterIP") == "None":
        problem(where, "a ClusterIP Service expected")
    ports = spec.get("ports") or []
    if [p.get("port") for p in ports] != [port]:
        problem(where, f"port {port} expected, found {[p.get('port') for p in ports]}")
    tmpl = (deploy.get("spec") or {}).get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    sel = spec.get("selector") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        problem(where, f"selector {sel} does not select the Deployment's pods {labels}")
    cports = container_ports(tmpl.get("spec") or {})
    for p in ports:
        tp = p.get("targetPort")
        if isinstance(tp, str) and cports.get(tp) != port or isinstance(tp, int) and tp not in cports.values():
            problem(where, f"targetPort {tp!r} is not the container's port {port}")


def check_deployment_basics(where, d):
    spec = d.get("spec") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not sel or any(labels.get(k) != v for k, v in sel.items()):
        problem(where, "selector does not match the template labels")
    pod = (spec.get("template") or {}).get("spec") or {}
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    used = set()
    for c in pod.get("containers") or []:
        for m in c.get("volumeMounts") or []:
            used.add(m.get("name"))
            if m.get("name") not in vols:
                problem(where, f"mount {m.get('name')!r} has no volume")
    for n in vols:
        if n not in used:
            problem(where, f"volume {n!r} is not mounted")
    check_restricted(where, pod)
    return pod


def signetd_flags():
    path = os.path.join(ROOT, "controller", "main.cpp")
    if not os.path.exists(path):
        return None
    text = open(path).read()
    start = text.find("Usage: signetd")
    end = text.find(')"', start)
    if start < 0 or end < 0:
        return None
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text[start:end]))


def check_addon(dash):
    dash_files = sorted(dash)
    objs = {}
    info = {}
    k = (load_yaml_docs(os.path.join(ADDON, "kustomization.yaml"), "addon kustomization.yaml") or [{}])[0]
    if k.get("namespace") != NAMESPACE:
        problem("addon kustomization.yaml", f"namespace {NAMESPACE} expected")
    res = k.get("resources") or []
    if "../../grafana" not in res:
        problem("addon kustomization.yaml", "resources must include ../../grafana (the dashboards ConfigMap)")
    for r in res:
        if not os.path.exists(os.path.join(ADDON, r)):
            problem("addon kustomization.yaml", f"resource {r} does not exist")
    for r in res:
        if r.endswith(".yaml"):
            for d in load_yaml_docs(os.path.join(ADDON, r), r):
                key = (d.get("kind"), (d.get("metadata") or {}).get("name"))
                if key in objs:
                    problem(r, f"duplicate {key}")
                objs[key] = d
    gens = {g.get("name"): g for g in k.get("configMapGenerator") or []}

    gk = (load_yaml_docs(os.path.join(GRAFANA, "kustomization.yaml"), "manifests/grafana/kustomization.yaml") or [{}])[0]
    ggens = {g.get("name"): g for g in gk.get("configMapGenerator") or []}
    dgen = ggens.get("signet-grafana-dashboards")
    if not dgen:
        problem("manifests/grafana/kustomization.yaml", "configMapGenerator signet-grafana-dashboards missing")
    else:
        files = dgen.get("files") or []
        if sorted(files) != sorted(dash_files):
            problem("manifests/grafana/kustomization.yaml", f"generator files {files} must be exactly {sorted(dash_files)}")
        if any("=" in f or "/" in f for f in files):
            problem("manifests/grafana/kustomization.yaml", "keys must be the plain file names")
    if gk.get("namespace") != NAMESPACE:
        problem("manifests/grafana/kustomization.yaml", f"namespace {NAMESPACE} expected")
    total = sum(os.path.getsize(os.path.join(GRAFANA, f)) for f in dash_files)
    if total > 200 * 1024:
        problem("manifests/grafana", f"dashboards total {total} bytes: kubectl apply's last-applied annotation holds 256 KiB")

    # InfluxDB
    inf = objs.get(("Deployment", "signet-influxdb"))
    pvc = objs.get(("PersistentVolumeClaim", "signet-influxdb"))
    isvc = objs.get(("Service", "signet-influxdb"))
    if not (inf and pvc and isvc):
        problem("influxdb.yaml", "Deployment, PersistentVolumeClaim and Service signet-influxdb expected")
    else:
        pod = check_deployment_basics("Deployment signet-influxdb", inf)
        c = (pod.get("containers") or [{}])[0]
        if c.get("image") != "influxdb:1.8":
            problem("Deployment signet-influxdb", f"image influxdb:1.8 expected, not {c.get('image')}")
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        if env.get("INFLUXDB_DB") != "signet":
            problem("Deployment signet-influxdb", "INFLUXDB_DB=signet expected")
        info["db"] = env.get("INFLUXDB_DB")
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or [] if v.get("persistentVolumeClaim")]
        if claims != ["signet-influxdb"]:
            problem("Deployment signet-influxdb", f"the PVC signet-influxdb must be its volume, found {claims}")
        mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
        data_vol = mounts.get("/var/lib/influxdb")
        if not any(v.get("name") == data_vol and v.get("persistentVolumeClaim") for v in pod.get("volumes") or []):
            problem("Deployment signet-influxdb", "/var/lib/influxdb must be on the PVC")
        if ((inf.get("spec") or {}).get("strategy") or {}).get("type") != "Recreate":
            problem("Deployment signet-influxdb", "strategy Recreate expected (ReadWriteOnce volume)")
        if ((pvc.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage") is None:
            problem("PersistentVolumeClaim signet-influxdb", "storage request missing")
        check_service("Service signet-influxdb", isvc, inf, 8086)

    # Grafana
    gra = objs.get(("Deployment", "signet-grafana"))
    gsvc = objs.get(("Service", "signet-grafana"))
    if not (gra and gsvc):
        problem("grafana.yaml", "Deployment and Service signet-grafana expected")
        return info
    pod = check_deployment_basics("Deployment signet-grafana", gra)
    check_service("Service signet-grafana", gsvc, gra, 3000)
    c = (pod.get("containers") or [{}])[0]
    if not re.fullmatch(r"grafana/grafana:10\.4\.\d+", c.get("image") or ""):
        problem("Deployment signet-grafana", f"image grafana/grafana:10.4.x expected, not {c.get('image')}")
    cm_mounts = {}
    for v in pod.get("volumes") or []:
        if v.get("configMap"):
            cm = v["configMap"]["name"]
            path = next((m.get("mountPath") for m in c.get("volumeMounts") or [] if m.get("name") == v.get("name")), None)
            cm_mounts[cm] = path
    for needed in ("signet-grafana-datasources", "signet-grafana-dashboard-providers"):
        if needed not in gens:
            problem("addon kustomization.yaml", f"configMapGenerator {needed} missing")
    if cm_mounts.get("signet-grafana-datasources") != "/etc/grafana/provisioning/datasources":
        problem("Deployment signet-grafana", "ConfigMap signet-grafana-datasources at /etc/grafana/provisioning/datasources expected")
    if cm_mounts.get("signet-grafana-dashboard-providers") != "/etc/grafana/provisioning/dashboards":
        problem("Deployment signet-grafana", "ConfigMap signet-grafana-dashboard-providers at /etc/grafana/provisioning/dashboards expected")
    dash_path = cm_mounts.get("signet-grafana-dashboards")
    if not dash_path:
        problem("Deployment signet-grafana", "ConfigMap signet-grafana-dashboards is not mounted")

    def gen_file(gen_name, where):
        g = gens.get(gen_name) or {}
        files = g.get("files") or []
        if len(files) != 1:
            problem(where, f"generator {gen_name}: one file expected")
            return None
        key, _, src = files[0].partition("=")
        src = src or key
        if not key.endswith(".yaml"):
            problem(where, f"generator {gen_name}: key {key!r} must end in .yaml (Grafana reads *.yaml)")
        docs = load_yaml_docs(os.path.join(ADDON, src), src)
        return docs[0] if docs else None

    dsf = gen_file("signet-grafana-datasources", "addon kustomization.yaml") or {}
    dss = dsf.get("datasources") or []
    if dsf.get("apiVersion") != 1 or len(dss) != 1:
        problem("grafana-datasource.yaml", "apiVersion 1 with one datasource expected")
    else:
        ds = dss[0]
        url = urllib.parse.urlsplit(ds.get("url") or "")
        db = (ds.get("jsonData") or {}).get("dbName") or ds.get("database")
        if ds.get("name") != "signet-influxdb" or ds.get("type") != "influxdb":
            problem("grafana-datasource.yaml", "datasource name signet-influxdb of type influxdb expected")
        if ds.get("uid") != ((dash.get("signet-flows.json") or {}).get("templating", {}).get("list", [{}])[0].get("current") or {}).get("value"):
            problem("grafana-datasource.yaml", "uid must be the dashboards' default for ${DS_SIGNET_INFLUXDB}")
        if url.hostname != f"signet-influxdb.{NAMESPACE}.svc" or url.port != 8086 or url.scheme != "http":
            problem("grafana-datasource.yaml", f"url {ds.get('url')!r} must be http://signet-influxdb.{NAMESPACE}.svc:8086")
        if db != info.get("db"):
            problem("grafana-datasource.yaml", f"database {db!r} is not the one InfluxDB creates ({info.get('db')!r})")
        info["ds_url"] = ds.get("url")
    prov = gen_file("signet-grafana-dashboard-providers", "addon kustomization.yaml") or {}
    provs = prov.get("providers") or []
    if prov.get("apiVersion") != 1 or len(provs) != 1 or provs[0].get("type") != "file":
        problem("grafana-dashboard-provider.yaml", "apiVersion 1 with one file provider expected")
    elif (provs[0].get("options") or {}).get("path") != dash_path:
        problem("grafana-dashboard-provider.yaml", f"path {(provs[0].get('options') or {}).get('path')!r} is not where the dashboards are mounted ({dash_path!r})")
    env = {e.get("name"): e.get("value") for e in c.get("env") or []}
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and (os.path.dirname(home) != dash_path or os.path.basename(home) not in dash_files):
        problem("Deployment signet-grafana", f"home dashboard {home} is not a provisioned file")
    return info


def check_components(info):
    flags = signetd_flags()
    url = None
    for comp in ("signetd-influxdb", "signetd-metrics"):
        path = os.path.join(ADDON, comp, "kustomization.yaml")
        k = (load_yaml_docs(path, f"{comp}/kustomization.yaml") or [{}])[0]
        if k.get("kind") != "Component":
            problem(comp, "a kustomize Component expected")
        text = open(path).read() if os.path.exists(path) else ""
        for flag in re.findall(r"^\s*value: (--[a-z-]+)=", text, re.M):
            if flags is not None and flag not in flags:
                problem(comp, f"signetd has no flag {flag}")
        m = re.search(r"--influxdb=(\S+)", text)
        if m and comp == "signetd-influxdb":
            url = m.group(1)
    if not url:
        problem("signetd-influxdb", "no --influxdb flag")
    elif info.get("ds_url"):
        if url != info["ds_url"].rstrip("/") + "/?db=" + str(info.get("db")):
            problem("signetd-influxdb", f"--influxdb {url} does not name the add-on's InfluxDB and database")
    return url


def kubectl_checks(dash_files):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("test_dashboards.py: kubectl not found: `kubectl kustomize` builds NOT checked")
        return 0
    # kubectl before 1.21 (Debian 12's kubernetes-client is 1.20) embeds kustomize
    # v2.0.3, which predates the generator options the add-on uses (kustomize v3+).
    ver = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
    try:
        cv = json.loads(ver.stdout)["clientVersion"]
        minor = int(re.match(r"\d+", cv["minor"]).group(0))
    except (ValueError, KeyError, TypeError, AttributeError):
        minor = None
    if minor is not None and minor < 21:
        print(f"test_dashboards.py: !!! kubectl {cv.get('gitVersion')} embeds kustomize v2.0.3, too old for the "
              "add-on's kustomization (kustomize v3+): `kubectl kustomize` builds NOT checked (install a kubectl "
              ">= 1.21 to check them)")
        return 0
    out = subprocess.run([kubectl, "kustomize", ADDON], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        problem("addon", "kubectl kustomize fails: " + out.stderr.strip())
        return 0
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted((d["kind"], re.sub(r"-[a-z0-9]{10}$", "-HASH", d["metadata"]["name"])) for d in built)
    want = sorted([("ConfigMap", "signet-grafana-dashboards-HASH"), ("ConfigMap", "signet-grafana-datasources-HASH"),
                   ("ConfigMap", "signet-grafana-dashboard-providers-HASH"), ("Deployment", "signet-grafana"),
                   ("Deployment", "signet-influxdb"), ("PersistentVolumeClaim", "signet-influxdb"),
                   ("Service", "signet-grafana"), ("Service", "signet-influxdb")])
    if kinds != want:
        problem("addon", f"kubectl kustomize builds {kinds}, expected {want}")
    cms = {d["metadata"]["name"]: d for d in built if d["kind"] == "ConfigMap"}
    for d in built:
        if d["metadata"].get("namespace") != NAMESPACE:
            problem("addon", f"{d['kind']} {d['metadata']['name']} not in {NAMESPACE}")
    dcm = [d for n, d in cms.items() if n.startswith("signet-grafana-dashboards-")]
    if dcm:
        data = dcm[0].get("data") or {}
        if sorted(data) != sorted(dash_files):
            problem("addon", f"dashboards ConfigMap keys {sorted(data)} are not the files {sorted(dash_files)}")
        for f in dash_files:
            if data.get(f) != open(os.path.join(GRAFANA, f), encoding="utf-8").read():
                problem("addon", f"dashboards ConfigMap {f} differs from manifests/grafana/{f}")
    for d in built:
        if d["kind"] == "Deployment":
            for v in d["spec"]["template"]["spec"].get("volumes") or []:
                if v.get("configMap") and v["configMap"]["name"] not in cms:
                    problem("addon", f"{d['metadata']['name']} mounts ConfigMap {v['configMap']['name']}, which is not built")

    # An overlay of the base with both components (kustomize wants relative paths).
    tmp = tempfile.mkdtemp(prefix="signet-dash-kust-")
    try:
        rel = lambda p: os.path.relpath(p, tmp)
        with open(os.path.join(tmp, "kustomization.yaml"), "w") as fh:
            yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                            "resources": [rel(os.path.join(ROOT, "manifests"))],
                            "components": [rel(os.path.join(ADDON, "signetd-influxdb")),
                                           rel(os.path.join(ADDON, "signetd-metrics"))]}, fh)
        out = subprocess.run([kubectl, "kustomize", tmp], capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out.returncode != 0:
        problem("components", "an overlay of manifests/ with the components does not build: " + out.stderr.strip())
        return 1
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    ds = [d for d in docs if d["kind"] == "DaemonSet"]
    if len(ds) != 1:
        problem("components", "no DaemonSet in the overlay")
        return 1
    pod = ds[0]["spec"]["template"]["spec"]
    c = [c for c in pod["containers"] if c["name"] == "signetd"][0]
    args = c.get("args") or []
    env = {e["name"] for e in c.get("env") or []}
    flags = signetd_flags()
    for a in args:
        if flags is not None and a.split("=", 1)[0] not in flags:
            problem("components", f"signetd has no flag {a}")
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
            if var not in env:
                problem("components", f"{a}: $({var}) is not an env var of signetd")
    if not any(a.startswith("--influxdb=http://signet-influxdb.signet-system.svc:8086/") for a in args):
        problem("components", f"--influxdb missing from the signetd args {args}")
    if "--metrics-address=$(POD_IP):9464" not in args:
        problem("components", "--metrics-address missing from the signetd args")
    # The base DaemonSet's own signetd args come first, unchanged.
    with open(os.path.join(ROOT, "manifests", "30-daemonset.yaml")) as fh:
        base_ds = [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == "DaemonSet"][0]
    base = [x for x in base_ds["spec"]["template"]["spec"]["containers"] if x["name"] == "signetd"][0].get("args") or []
    base_args = len(base)
    if len(args) != base_args + 2 or args[:base_args] != base:
        problem("components", f"the components must append to the base args, got {args}")
    svc = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "signet-metrics"]
    tmpl_labels = ds[0]["spec"]["template"]["metadata"]["labels"]
    if not svc or any(tmpl_labels.get(k) != v for k, v in (svc[0]["spec"].get("selector") or {}).items()):
        problem("components", "Service signet-metrics must select the signetd pods")
    if {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}.get("metrics") != 9464:
        problem("components", "signetd container port 'metrics' 9464 missing")
    return 2


# ------------------------------------------------------------------ live influxd

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(url, data=None, timeout=10):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def line(measurement, tags, fields, ts):
    def esc(v):
        return re.sub(r"([,= ])", r"\\\1", v)
    t = ",".join(f"{esc(k)}={esc(v)}" for k, v in sorted(tags.items()) if v != "")
    f = ",".join(f"{k}={v}i" if isinstance(v, int) else f'{k}="{v}"' for k, v in fields.items())
    return f"{measurement},{t} {f} {ts}"


def sample_points(now_ns):
    """A small cluster: node-1 runs shop/web-1, shop/web-2, monitoring/prom-0;
    node-2 runs shop/api-1 and db/pg-0. Flows every 2 minutes over the last
    30 minutes, as signetd would export them (one point per flow key)."""
    s = 1_000_000_000
    ips = {"shop/web-1": "10.244.1.5", "shop/web-2": "10.244.1.6", "monitoring/prom-0": "10.244.1.9",
           "shop/api-1": "10.244.2.7", "db/pg-0": "10.244.2.8"}
    nodes = {"shop/web-1": "node-1", "shop/web-2": "node-1", "monitoring/prom-0": "node-1",
             "shop/api-1": "node-2", "db/pg-0": "node-2"}
    # (initiator, responder-or-address, proto, port, egress verdict/policy, ingress verdict/policy, conns, bytes out, in)
    flows = [
        ("shop/web-1", "shop/api-1", "TCP", "8080", ("allowed", "none"), ("allowed", "shop/api-from-web"), 4, 2200, 18000),
        ("shop/web-2", "shop/api-1", "TCP", "8080", ("allowed", "none"), ("allowed", "shop/api-from-web"), 2, 1100, 9000),
        ("shop/api-1", "db/pg-0", "TCP", "5432", ("allowed", "none"), ("allowed", "db/pg-from-api"), 1, 800, 40000),
        ("shop/web-1", "db/pg-0", "TCP", "5432", ("allowed", "none"), ("denied", "default-deny"), 1, 0, 0),
        ("monitoring/prom-0", "shop/api-1", "TCP", "9090", ("allowed", "none"), ("denied", "shop/deny-all"), 1, 0, 0),
        ("shop/web-1", "203.0.113.10", "TCP", "443", ("allowed", "none"), None, 1, 600, 5200),
        ("shop/web-2", "198.51.100.23", "TCP", "25", ("denied", "shop/web-egress"), None, 2, 0, 0),
        ("192.0.2.44", "shop/web-1", "TCP", "22", None, ("denied", "default-deny"), 3, 0, 0),
        ("shop/web-1", "10.96.0.10", "UDP", "53", ("allowed", "none"), None, 2, 140, 320),
    ]
    lines, totals = [], {"denied": 0, "pairs": {}}
    for step in range(15):
        ts = now_ns - (30 * 60 - step * 120) * s + 7 * s
        for i, (a, b, proto, port, eg, ing, conns, bout, bin_) in enumerate(flows):
            t = ts + i * s
            common = {"proto": proto, "port": port, "authenticated": "false"}
            src = ips.get(a, a)
            dst = ips.get(b, b)
            if eg and a in ips:
                ns, pod = a.split("/")
                peer = {"peer_kind": "pod", "peer_namespace": b.split("/")[0], "peer_pod": b.split("/")[1]} if b in ips \
                    else {"peer_kind": "address"}
                verdict, policy = eg
                lines.append(line("signet_flow", {**common, **peer, "node": nodes[a], "direction": "egress",
                                                  "verdict": verdict, "policy": policy, "local_namespace": ns,
                                                  "local_pod": pod},
                                  {"connections": conns, "packets_out": conns * 6, "bytes_out": bout if verdict == "allowed" else 0,
                                   "packets_in": conns * 5, "bytes_in": bin_ if verdict == "allowed" else 0,
                                   "first_seen_ns": t - 5 * s, "last_seen_ns": t, "src": src, "dst": dst}, t))
                if verdict == "denied":
                    totals["denied"] += conns
                elif b in ips:
                    totals["pairs"][(ns, pod, b)] = totals["pairs"].get((ns, pod, b), 0) + bout + bin_
                if verdict == "denied":
                    continue  # never reached the responder
            if ing and b in ips:
                ns, pod = b.split("/")
                peer = {"peer_kind": "pod", "peer_namespace": a.split("/")[0], "peer_pod": a.split("/")[1]} if a in ips \
                    else {"peer_kind": "address"}
                verdict, policy = ing
                ok = verdict == "allowed"
                lines.append(line("signet_flow", {**common, **peer, "node": nodes[b], "direction": "ingress",
                                                  "verdict": verdict, "policy": policy, "local_namespace": ns,
                                                  "local_pod": pod},
                                  {"connections": conns, "packets_out": conns * 5 if ok else 0,
                                   "bytes_out": bin_ if ok else 0, "packets_in": conns * 6 if ok else conns * 2,
                                   "bytes_in": bout if ok else conns * 60, "first_seen_ns": t - 5 * s,
                                   "last_seen_ns": t, "src": src, "dst": dst}, t + 1000))
                if not ok:
                    totals["denied"] += conns
    for i, (pod, ev) in enumerate([("shop/web-1", "start"), ("shop/web-2", "start"), ("shop/api-1", "start"),
                                   ("db/pg-0", "start"), ("monitoring/prom-0", "start"), ("shop/web-2", "stop"),
                                   ("shop/web-2", "start")]):
        ns, name = pod.split("/")
        t = now_ns - (40 - i * 5) * 60 * s
        lines.append(line("signet_pod_event", {"node": nodes[pod], "namespace": ns, "pod": name, "event": ev},
                          {"uid": f"7f3c9a2e-0000-4000-8000-00000000000{i}", "ips": ips[pod],
                           "labels": f"app={name.split('-')[0]},tier=backend"}, t))
    return lines, totals


def run_live(dashboards):
    influxd = os.environ.get("SIGNET_INFLUXD", "/usr/bin/influxd")
    if not os.path.exists(influxd):
        bar = "!" * 78
        print(f"{bar}\ntest_dashboards.py: {influxd} not found: the dashboard queries were NOT executed\n"
              f"against InfluxDB (offline checks only). Install Debian's influxdb package to run them.\n{bar}")
        return None
    tmp = tempfile.mkdtemp(prefix="signet-dash-influxd-")
    proc = None
    executed = 0
    try:
        http_port, rpc_port = free_port(), free_port()
        conf = os.path.join(tmp, "influxd.conf")
        with open(conf, "w") as fh:
            fh.write(influxd_config(tmp, http_port, rpc_port))

        log = open(os.path.join(tmp, "influxd.log"), "w")
        proc = subprocess.Popen([influxd, "run", "-config", conf], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.time() + 15
        while True:
            try:
                if http(base + "/ping", timeout=1)[0] == 204:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                problem("influxd", "did not start: " + open(os.path.join(tmp, "influxd.log")).read()[-2000:])
                return 0
            time.sleep(0.1)
        st, body = http(base + "/query", urllib.parse.urlencode({"q": "CREATE DATABASE signet"}).encode())
        if st != 200 or "error" in body:
            problem("influxd", f"CREATE DATABASE: {st} {body}")
            return 0
        lines, totals = sample_points(time.time_ns())
        st, body = http(base + "/write?db=signet&precision=ns", "\n".join(lines).encode())
        if st != 204:
            problem("influxd", f"/write: {st} {body}")
            return 0
        print(f"test_dashboards.py: influxd {influxd} on 127.0.0.1:{http_port}: wrote {len(lines)} points")

        def query(q):
            st, body = http(base + "/query?" + urllib.parse.urlencode({"db": "signet", "q": q, "epoch": "ms"}))
            try:
                doc = json.loads(body)
            except ValueError:
                return None, f"HTTP {st}: {body[:200]}"
            if st != 200 or doc.get("error"):
                return None, doc.get("error") or f"HTTP {st}"
            res = (doc.get("results") or [{}])[0]
            if res.get("error"):
                return None, res["error"]
            return res.get("series") or [], None

        modes = {
            "All": {"node": ".*", "namespace": ".*", "policy": ".*"},
            "concrete": {"node": regex_escape("node-1"), "namespace": regex_escape("shop"),
                         "policy": regex_escape("default-deny")},
        }
        results = {}
        for name, d in dashboards.items():
            variables = {v.get("name") for v in (d.get("templating") or {}).get("list") or []}
            for mode, values in modes.items():
                vals = {v: values.get(v, ".*") for v in variables}
                for where, q, kind, owner, target in queries_of(d):
                    if not isinstance(q, str):
                        continue
                    try:
                        sq = substitute(q, vals)
                    except QueryError as e:
                        problem(f"{name} {where}", str(e))
                        continue
                    series, err = query(sq)
                    executed += 1
                    if err:
                        problem(f"{name} {where} [{mode}]", f"InfluxDB error: {err}  [{sq}]")
                        continue
                    rows = sum(len(s.get("values") or []) for s in series)
                    if rows == 0:
                        problem(f"{name} {where} [{mode}]", f"returned no rows  [{sq}]")
                    results[(name, owner.get("title") or owner.get("name"), mode)] = series

        # A few values, against what was written.
        s = results.get(("signet-denials.json", "Denied connections", "All")) or []
        got = sum(v[1] for ser in s for v in ser["values"])
        if got != totals["denied"]:
            problem("signet-denials.json 'Denied connections'", f"sums to {got}, {totals['denied']} denied were written")
        s = results.get(("signet-flows.json", "Top talkers (pod pairs by bytes)", "All")) or []
        if s:
            cols = s[0]["columns"]
            rows = [dict(zip(cols, v)) for v in s[0]["values"]]
            best = max(rows, key=lambda r: r["bytes"])
            (ns, pod, peer), want = max(totals["pairs"].items(), key=lambda kv: kv[1])
            if (best["local_namespace"], best["local_pod"], f"{best['peer_namespace']}/{best['peer_pod']}", best["bytes"]) \
                    != (ns, pod, peer, want):
                problem("signet-flows.json 'Top talkers'", f"top row {best}, expected {ns}/{pod} -> {peer} {want} bytes")
            if len(rows) != len(totals["pairs"]):
                problem("signet-flows.json 'Top talkers'", f"{len(rows)} pairs, {len(totals['pairs'])} were written")
        s = results.get(("signet-denials.json", "All denied flows by policy", "concrete")) or []
        if any(ser.get("tags", {}).get("policy") != "default-deny" for ser in s):
            problem("signet-denials.json 'All denied flows by policy'", "the policy variable did not filter")
        s = results.get(("signet-flows.json", "namespace", "All")) or []
        got = sorted(v[1] for ser in s for v in ser["values"])
        if got != ["db", "monitoring", "shop"]:
            problem("signet-flows.json variable namespace", f"values {got}")
        return executed
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    # meson's timeout (SIGTERM) and ^C still stop influxd and remove its folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    started = time.time()
    dash = load_dashboards()
    uids = {}
    checked = 0
    panels = 0
    for name, d in dash.items():
        checked += check_dashboard(name, d, uids)
        panels += len(d.get("panels") or [])
    check_dashboard_content(dash)
    info = check_addon(dash)
    check_components(info)
    builds = kubectl_checks(sorted(dash))
    offline_problems = len(problems)
    executed = run_live(dash)
    for p in problems:
        print("FAIL " + p)
    live = ("queries NOT executed (no influxd)" if executed is None
            else f"{executed} query executions against a real influxd")
    print(f"test_dashboards.py: {len(dash)} dashboards, {panels} panels, {checked} InfluxQL queries checked offline, "
          f"{builds} kustomize builds, {live}; {offline_problems} offline + {len(problems) - offline_problems} live "
          f"problem(s) in {time.time() - started:.1f}s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
