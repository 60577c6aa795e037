#!/usr/bin/env python3
"""signet's Prometheus add-on (manifests/addons/prometheus), offline:

  - the PrometheusRule's rule groups pass `promtool check rules` and behave
    as test/prometheus/rules_test.yaml says on recorded series
    (`promtool test rules`: each alert fires, and does not where it must not);
  - every metric the rules and the ServiceMonitor rely on is one signetd
    exports (docs/metrics.md's table), so a renamed metric cannot leave an
    alert that never fires;
  - the ServiceMonitor selects the signet-metrics Service of the
    signetd-metrics component, on its port name.

Usage: test_rules.py [SOURCE_ROOT]. Needs promtool (Debian: prometheus) and
python3-yaml; exits 77 (skipped, said loudly) without promtool.
"""
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
addon = root / "manifests" / "addons" / "prometheus"
problems = []

promtool = shutil.which("promtool")
if not promtool:
    print("!!! SKIPPED: promtool is not installed (apt-get install prometheus): the alert rules are NOT checked !!!")
    sys.exit(77)

rule = yaml.safe_load((addon / "prometheusrule.yaml").read_text())
if rule.get("kind") != "PrometheusRule" or rule.get("apiVersion") != "monitoring.coreos.com/v1":
    problems.append("prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule")
groups = rule.get("spec", {}).get("groups", [])
with tempfile.TemporaryDirectory() as tmp:
    Path(tmp, "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(root / "test" / "prometheus" / "rules_test.yaml", Path(tmp, "rules_test.yaml"))
    for argv in ([promtool, "check", "rules", "rules.yaml"], [promtool, "test", "rules", "rules_test.yaml"]):
        p = subprocess.run(argv, cwd=tmp, capture_output=True, text=True)
        print(f"$ {' '.join(argv[1:])}\n{p.stdout}{p.stderr}".rstrip())
        if p.returncode != 0:
            problems.append(f"promtool {argv[1]} {argv[2]} failed")

documented = set(re.findall(r"^\| `(signet_[a-z0-9_]+)`", (root / "docs" / "metrics.md").read_text(), re.M))
alerts = set()
for g in groups:
    for r in g.get("rules", []):
        alerts.add(r.get("alert"))
        for m in set(re.findall(r"\b(signet_[a-z0-9_]+)", r.get("expr", ""))):
            # A histogram's series: NAME_bucket, NAME_sum, NAME_count of the documented NAME.
            if m not in documented and re.sub(r"_(bucket|sum|count)$", "", m) not in documented:
                problems.append(f"alert {r.get('alert')}: {m} is not a metric signetd exports (docs/metrics.md)")
tested = set(re.findall(r"alertname: (\w+)", (root / "test" / "prometheus" / "rules_test.yaml").read_text()))
for a in sorted(alerts - tested):
    problems.append(f"alert {a} has no promtool test")

sm = yaml.safe_load((addon / "servicemonitor.yaml").read_text())
svc = yaml.safe_load((root / "manifests" / "addons" / "influxdb-grafana" / "signetd-metrics" / "service.yaml").read_text())
want = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
if not want or any(svc["metadata"].get("labels", {}).get(k) != v for k, v in want.items()):
    problems.append("the ServiceMonitor's selector does not match the signet-metrics Service's labels")
ports = {p.get("name") for p in svc["spec"].get("ports", [])}
for ep in sm.get("spec", {}).get("endpoints", []):
    if ep.get("port") not in ports:
        problems.append(f"ServiceMonitor endpoint port {ep.get('port')!r} is not a port of signet-metrics")
kust = yaml.safe_load((addon / "kustomization.yaml").read_text())
if sorted(kust.get("resources", [])) != ["prometheusrule.yaml", "servicemonitor.yaml"]:
    problems.append("kustomization.yaml must list servicemonitor.yaml and prometheusrule.yaml")
if shutil.which("kubectl"):
    p = subprocess.run(["kubectl", "kustomize", str(addon)], capture_output=True, text=True)
    if p.returncode != 0:
        problems.append("kubectl kustomize manifests/addons/prometheus failed: " + p.stderr.strip())

for pr in problems:
    print("FAIL " + pr)
print(f"=== prometheus rules: {'PASS' if not problems else 'FAIL'} ({len(alerts)} alerts, {len(problems)} problems)")
sys.exit(1 if problems else 0)
