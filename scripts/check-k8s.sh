#!/usr/bin/env bash
# Offline checks of k8s/: render every kustomization, validate the objects against the
# Kubernetes schemas, check what the production cluster needs of them (one scrape per pod and
# line, the production Secret keys, node pool, PDB), check the alert and dashboard PromQL with
# promtool, run the alert unit tests, and check that every metric they use is documented in
# docs/METRICS.md. A missing tool prints SKIP with the reason; any failed check makes the exit
# status 1.
#   scripts/check-k8s.sh            # all checks
#   scripts/check-k8s.sh --write    # first rewrite k8s/monitoring/operator/prometheusrule.yaml
#   K8S_VERSION=1.31 scripts/check-k8s.sh   # validate against another Kubernetes version
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
skip() { printf 'SKIP  %s\n' "$*"; }
have() { command -v "$1" > /dev/null 2>&1; }

if ! have python3 || ! python3 -c 'import yaml' 2> /dev/null; then
    echo "FAIL  python3 with PyYAML is required (pip install pyyaml)"; exit 1
fi

# 1. The overlays carry copies of pipeline/<line>.toml (kustomize reads nothing above its root).
for line in paving concrete; do
    if cmp -s "pipeline/$line.toml" "k8s/overlays/$line/pipeline.toml"; then
        pass "k8s/overlays/$line/pipeline.toml equals pipeline/$line.toml"
    else
        fail "k8s/overlays/$line/pipeline.toml differs from pipeline/$line.toml (cp pipeline/$line.toml k8s/overlays/$line/)"
    fi
done

# 2. The PrometheusRule carries the groups of k8s/monitoring/rules.yaml (the one source).
python3 - "$root" "${1:-}" <<'PY' || fail "k8s/monitoring/operator/prometheusrule.yaml differs from k8s/monitoring/rules.yaml (scripts/check-k8s.sh --write)"
import sys, yaml
root, mode = sys.argv[1], sys.argv[2]
rules = yaml.safe_load(open(f"{root}/k8s/monitoring/rules.yaml"))
header = ("# GENERATED from k8s/monitoring/rules.yaml by `scripts/check-k8s.sh --write`: edit that\n"
          "# file, not this one (check-k8s.sh fails when the two differ).\n")
rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": "bowmark-cdc"}, "spec": {"groups": rules["groups"]}}
text = header + yaml.safe_dump(rule, sort_keys=False, width=100)
path = f"{root}/k8s/monitoring/operator/prometheusrule.yaml"
if mode == "--write":
    open(path, "w").write(text)
try:
    same = yaml.safe_load(open(path)) == rule
except FileNotFoundError:
    same = False
sys.exit(0 if same else 1)
PY
[ $? -eq 0 ] && pass "k8s/monitoring/operator/prometheusrule.yaml carries the groups of k8s/monitoring/rules.yaml"

# 3. Render. The overlays are rendered as they are (no Prometheus Operator needed) and, in a
#    copy, with components/prometheus-operator added (the PodMonitor per line).
targets=(overlays/paving overlays/concrete overlays/paving-shadow overlays/concrete-shadow infra infra-cluster backup monitoring monitoring/operator)
rendered=()
if have kubectl; then
    for t in "${targets[@]}"; do
        out="$tmp/$(echo "$t" | tr / -).yaml"
        if kubectl kustomize "k8s/$t" > "$out" 2> "$tmp/err"; then
            pass "kubectl kustomize k8s/$t ($(grep -c '^kind:' "$out") objects)"
            rendered+=("$out")
        else
            fail "kubectl kustomize k8s/$t: $(cat "$tmp/err")"
        fi
    done
    for line in paving concrete paving-shadow concrete-shadow; do
        out="$tmp/overlays-$line.yaml"
        [ -f "$out" ] || continue
        if grep -n 'OVERLAY-SETS' "$out" > "$tmp/err"; then
            fail "overlays/$line leaves base placeholders: $(head -3 "$tmp/err" | tr '\n' ' ')"
        else
            pass "overlays/$line sets every Secret name and key of its line"
        fi
    done
    cp -r k8s "$tmp/k8s"
    for line in paving concrete; do
        printf 'components:\n  - ../../components/prometheus-operator\n' >> "$tmp/k8s/overlays/$line/kustomization.yaml"
        out="$tmp/operator-$line.yaml"
        if kubectl kustomize "$tmp/k8s/overlays/$line" > "$out" 2> "$tmp/err"; then
            pass "kubectl kustomize k8s/overlays/$line + components/prometheus-operator ($(grep -c '^kind:' "$out") objects)"
            rendered+=("$out")
        else
            fail "kubectl kustomize overlays/$line + components/prometheus-operator: $(cat "$tmp/err")"
        fi
    done
else
    skip "kubectl not found: cannot render the kustomizations (and so cannot validate them)"
fi

# 4. What the running cluster needs of the rendered objects.
if [ ${#rendered[@]} -gt 0 ]; then
python3 - "$tmp" <<'PY'
import os, sys, yaml
tmp = sys.argv[1]
def load(name):
    path = f"{tmp}/{name}.yaml"
    return [d for d in yaml.safe_load_all(open(path)) if d] if os.path.exists(path) else []
problems, passed = [], []
def check(ok, good, bad):
    (passed if ok else problems).append(good if ok else bad)
# The production Secrets and their keys (the legacy deploy's names).
secrets = {"postgres": {"user", "password", "host", "port", "dbPaving", "dbConcrete"},
           "rabbitmq": {"user", "password", "host", "port", "vhost", "vhostConcrete"},
           "paving": {"mongoURI"}, "concrete": {"mongoURI"},
           "spaces": {"key", "secret", "name", "region"}}
def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {})
def refs(obj):
    t = pod_spec(obj).get("spec", {})
    for c in t.get("initContainers", []) + t.get("containers", []):
        for e in c.get("env", []):
            r = e.get("valueFrom", {}).get("secretKeyRef")
            if r:
                yield c["name"], r["name"], r["key"]
for name in ["overlays-paving", "overlays-concrete", "backup"]:
    for obj in load(name):
        for c, s, k in refs(obj):
            if k not in secrets.get(s, set()):
                problems.append(f"{name}: {obj['kind']} {obj['metadata']['name']} container {c} reads Secret {s} key {k}, which production's Secret {s} does not have")
passed.append("every secretKeyRef of the overlays and pg-backup names a production Secret key")
pods = []   # (line, kind/name, pod labels, template) of the sync and backfill pods
for line in ["paving", "concrete"]:
    for obj in load(f"overlays-{line}"):
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "PodMonitor":
            problems.append(f"overlays/{line} renders a PodMonitor: it needs the Prometheus Operator, keep it in components/prometheus-operator")
        if kind in ("Deployment", "CronJob"):
            t = pod_spec(obj)
            if t["metadata"]["labels"].get("app.kubernetes.io/component") == "verify":
                # (a short Job with no metrics of its own: the daemon exports its result)
                check(t["spec"].get("nodeSelector", {}).get("doks.digitalocean.com/node-pool") == "default-pool",
                      f"{line} {kind}/{name}: node pool default-pool",
                      f"{line} {kind}/{name}: nodeSelector doks.digitalocean.com/node-pool: default-pool missing")
                continue
            pods.append((line, f"{kind}/{name}", t["metadata"]["labels"], t))
            ann = t["metadata"].get("annotations", {})
            ports = [p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])]
            check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") in [str(p) for p in ports],
                  f"{line} {kind}/{name}: prometheus.io scrape annotations on its metrics port",
                  f"{line} {kind}/{name}: prometheus.io/scrape and /port (one of {ports}) missing")
            check(t["spec"].get("nodeSelector", {}).get("doks.digitalocean.com/node-pool") == "default-pool",
                  f"{line} {kind}/{name}: node pool default-pool",
                  f"{line} {kind}/{name}: nodeSelector doks.digitalocean.com/node-pool: default-pool missing")
        if kind == "PodDisruptionBudget":
            check(obj["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
                  f"{line} {name}: unhealthy pods may be evicted (node drains during an outage)",
                  f"{line} {name}: unhealthyPodEvictionPolicy is not AlwaysAllow")
def selects(sel, labels):
    if any(labels.get(k) != v for k, v in sel.get("matchLabels", {}).items()):
        return False
    for e in sel.get("matchExpressions", []):
        v, op = labels.get(e["key"]), e["operator"]
        if (op == "In" and v not in e["values"]) or (op == "NotIn" and v in e["values"]) \
                or (op == "Exists" and v is None) or (op == "DoesNotExist" and v is not None):
            return False
    return True
monitors = [(line, o) for line in ["paving", "concrete"] for o in load(f"operator-{line}") if o["kind"] == "PodMonitor"]
if monitors:
    check(len(monitors) == 2, "one PodMonitor per line", f"{len(monitors)} PodMonitors for two lines")
    for line, what, labels, _ in pods:
        by = [f"{l}/{m['metadata']['name']}" for l, m in monitors if selects(m["spec"]["selector"], labels)]
        check(by == [f"{line}/{line}-bowmark-cdc"],
              f"{line} {what} pods are scraped once, by their line's PodMonitor",
              f"{line} {what} pods are selected by {by or 'no PodMonitor'} (want exactly {line}-bowmark-cdc)")
# The shadow overlays (docs/cutover.md): their own pods, database and vhost.
for line in ["paving", "concrete"]:
    real = {o["kind"]: o for o in load(f"overlays-{line}") if o["kind"] in ("Deployment", "CronJob")}
    shadow = {o["kind"]: o for o in load(f"overlays-{line}-shadow") if o["kind"] in ("Deployment", "CronJob")}
    if not real or not shadow:
        continue
    rd, sd = real["Deployment"], shadow["Deployment"]
    overlap = selects(rd["spec"]["selector"], pod_spec(sd)["metadata"]["labels"]) \
        or selects(sd["spec"]["selector"], pod_spec(rd)["metadata"]["labels"])
    check(not overlap, f"{line}-shadow: its Deployment and the real one select disjoint pods",
          f"{line}-shadow: the shadow and the real Deployment select each other's pods")
    for obj in shadow.values():
        t = pod_spec(obj)["spec"]
        for c in t.get("initContainers", []) + t["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            want = {"POSTGRES_DB": f"bowmark_reports_{line}_shadow"}
            if "RABBITMQ_VHOST" in env:
                want["RABBITMQ_VHOST"] = "bowmark-shadow" if line == "paving" else "bowmark-concrete-shadow"
            ok = all(env.get(k, {}).get("value") == v and "valueFrom" not in env.get(k, {}) for k, v in want.items())
            check(ok, f"{line}-shadow {obj['kind']} container {c['name']}: its own database and vhost",
                  f"{line}-shadow {obj['kind']} container {c['name']}: POSTGRES_DB/RABBITMQ_VHOST not the shadow's ({ {k: env.get(k) for k in want} })")
for p in passed:
    print(f"PASS  {p}")
for p in problems:
    print(f"FAIL  {p}")
sys.exit(1 if problems else 0)
PY
[ $? -eq 0 ] || failures=$((failures + 1))
fi

# 5. Schema validation (CRDs such as PodMonitor and PrometheusRule have no bundled schema:
#    kubernetes-validate only warns about them).
if [ ${#rendered[@]} -eq 0 ]; then
    skip "kubernetes-validate: nothing rendered"
elif have kubernetes-validate; then
    kv_args=(--strict)
    [ -n "${K8S_VERSION:-}" ] && kv_args+=(-k "$K8S_VERSION")
    for out in "${rendered[@]}"; do
        name=$(basename "$out" .yaml)
        if kubernetes-validate "${kv_args[@]}" "$out" > "$tmp/kv" 2>&1; then
            pass "kubernetes-validate ${kv_args[*]} $name ($(grep -c '^INFO' "$tmp/kv") valid, $(grep -c '^WARN' "$tmp/kv") without schema)"
        else
            fail "kubernetes-validate ${kv_args[*]} $name:"; grep -v '^INFO' "$tmp/kv" | sed 's/^/      /'
        fi
    done
else
    skip "kubernetes-validate not found (pip install kubernetes-validate)"
fi

# 6. Extract the PromQL: the dashboard's panel expressions as recording rules (Grafana
#    variables replaced), and the metric names the rules and the panels use.
python3 - "$root" "$tmp" <<'PY' || fail "extracting the rules and the dashboard expressions"
import json, re, sys, yaml
root, tmp = sys.argv[1], sys.argv[2]
rule = {"spec": yaml.safe_load(open(f"{root}/k8s/monitoring/rules.yaml"))}
dash = json.load(open(f"{root}/k8s/monitoring/dashboard.json"))
exprs, ids = [], []
def walk(panels):
    for p in panels:
        ids.append(p["id"])
        for t in p.get("targets", []):
            exprs.append((p["title"], t["expr"]))
        walk(p.get("panels", []))
walk(dash["panels"])
problems = []
if len(ids) != len(set(ids)):
    problems.append("duplicate panel ids")
if not dash.get("uid"):
    problems.append("no uid")
def grafana(e):
    return (e.replace("$__rate_interval", "1m").replace("$__interval", "1m")
             .replace("${pipeline}", ".*").replace("$pipeline", ".*"))
rules = [{"record": f"dashboard:panel_{i}", "expr": grafana(e)} for i, (_, e) in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(f"{tmp}/dashboard-rules.yaml", "w"))
used = {}
def names(where, e):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)          # drop label values
    e = re.sub(r'\{[^}]*\}', '', e)                     # drop matchers
    e = re.sub(r'\[[^\]]*\]', '', e)                   # drop ranges
    e = re.sub(r'\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', '', e)
    for n in re.findall(r'\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()', e):
        used.setdefault(n, set()).add(where)
for g in rule["spec"]["groups"]:
    for r in g["rules"]:
        names(f"alert {r.get('alert') or r.get('record')}", r["expr"])
for title, e in exprs:
    names(f"panel '{title}'", e)
json.dump({k: sorted(v) for k, v in used.items()}, open(f"{tmp}/used.json", "w"))
open(f"{tmp}/dashboard.txt", "w").write(f"{len(ids)} panels, {len(exprs)} queries\n" + "".join(f"problem: {p}\n" for p in problems))
sys.exit(1 if problems else 0)
PY
[ -f "$tmp/dashboard.txt" ] && ! grep -q problem "$tmp/dashboard.txt" && pass "dashboard.json structure ($(head -1 "$tmp/dashboard.txt"), unique ids, uid)"

# 7. promtool: syntax and semantics of every expression, then the alert unit tests.
if ! have promtool; then
    skip "promtool not found (apt-get install prometheus, or scripts/services.sh): PromQL not checked"
elif [ -f "$tmp/dashboard-rules.yaml" ]; then
    if promtool check rules k8s/monitoring/rules.yaml > "$tmp/pt" 2>&1; then
        pass "promtool check rules k8s/monitoring/rules.yaml ($(grep -o 'SUCCESS: [0-9]* rules' "$tmp/pt"))"
    else
        fail "promtool check rules k8s/monitoring/rules.yaml:"; sed 's/^/      /' "$tmp/pt"
    fi
    if promtool check rules "$tmp/dashboard-rules.yaml" > "$tmp/pt" 2>&1; then
        pass "promtool check rules: dashboard queries ($(grep -o 'SUCCESS: [0-9]* rules' "$tmp/pt"))"
    else
        fail "promtool check rules (dashboard queries):"; sed 's/^/      /' "$tmp/pt"
    fi
    if python3 - <<'PY'
import sys, yaml
rules = yaml.safe_load(open("k8s/monitoring/rules.yaml"))
tests = yaml.safe_load(open("k8s/monitoring/tests/alerts.test.yaml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
fired = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
missing = sorted(alerts - fired)
if missing:
    print("FAIL  alerts without a promtool case that fires them: " + ", ".join(missing))
    sys.exit(1)
print(f"PASS  each of the {len(alerts)} alerts has a promtool case that fires it")
PY
    then :; else failures=$((failures + 1)); fi
    if promtool test rules k8s/monitoring/tests/alerts.test.yaml > "$tmp/pt" 2>&1; then
        pass "promtool test rules k8s/monitoring/tests/alerts.test.yaml"
    else
        fail "promtool test rules k8s/monitoring/tests/alerts.test.yaml:"; sed 's/^/      /' "$tmp/pt"
    fi
fi

# 8. Every metric the alerts and the dashboard use exists: cdc_* and process_* in
#    docs/METRICS.md, the others (kube-state-metrics, Prometheus) from a short allow-list.
if [ -f "$tmp/used.json" ]; then
python3 - "$root" "$tmp" <<'PY'
import json, re, sys
root, tmp = sys.argv[1], sys.argv[2]
used = json.load(open(f"{tmp}/used.json"))
doc = open(f"{root}/docs/METRICS.md").read()
documented = set(re.findall(r"`((?:cdc|process)_[a-z0-9_]+)`", doc))
histograms = {m for m in documented if re.search(rf"`{m}`\s*\|\s*histogram", doc)}
external = {"up", "kube_pod_status_ready", "kube_deployment_status_replicas_available",
            "kube_job_status_start_time", "kube_job_failed", "kube_cronjob_created",
            "kube_cronjob_status_last_successful_time"}
keywords = {"and", "or", "unless", "bool", "offset", "le", "inf", "nan", "time"}
bad, checked = [], set()
for name, where in sorted(used.items()):
    if name.lower() in keywords:
        continue
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name.startswith(("cdc_", "process_")):
        ok = name in documented or (base in histograms and base != name)
    else:
        ok = name in external
    checked.add(name)
    if not ok:
        bad.append(f"{name} (used by {', '.join(where)})")
if bad:
    print("FAIL  metric names not in docs/METRICS.md (or the external allow-list):")
    for b in bad:
        print("      " + b)
    sys.exit(1)
cdc = sorted(n for n in checked if n.startswith(("cdc_", "process_")))
print(f"PASS  {len(cdc)} cdc_* and process_* metric names used by alerts and dashboard are in docs/METRICS.md; "
      f"external: {', '.join(sorted(checked - set(cdc)))}")
PY
[ $? -eq 0 ] || failures=$((failures + 1))
fi

# 9. The pipeline copies parse as the daemon reads them (needs a built binary).
bin=${BOWMARK_CDC_BIN:-}
[ -z "$bin" ] && for b in target/release/bowmark-cdc target/debug/bowmark-cdc; do [ -x "$b" ] && bin=$b && break; done
if [ -n "$bin" ]; then
    if "$bin" validate k8s/overlays/paving/pipeline.toml k8s/overlays/concrete/pipeline.toml > "$tmp/v" 2>&1; then
        pass "bowmark-cdc validate on the overlay pipeline files"
    else
        fail "bowmark-cdc validate:"; sed 's/^/      /' "$tmp/v"
    fi
else
    skip "bowmark-cdc validate: no built binary (target/*/bowmark-cdc or BOWMARK_CDC_BIN); the files equal pipeline/*.toml, which the test suite validates"
fi

if [ "$failures" -gt 0 ]; then
    echo "check-k8s: $failures check(s) failed"; exit 1
fi
echo "check-k8s: all checks passed"
