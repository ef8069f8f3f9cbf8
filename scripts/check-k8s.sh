#!/usr/bin/env bash
# Offline checks of k8s/: render every kustomization, validate the objects against the
# Kubernetes schemas, check the alert and dashboard PromQL with promtool, run the alert unit
# tests, and check that every cdc_* metric they use is documented in docs/METRICS.md.
# A missing tool prints SKIP with the reason; any failed check makes the exit status 1.
#   scripts/check-k8s.sh            # all checks
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

# 2. Render.
targets=(overlays/paving overlays/concrete infra monitoring)
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
    for line in paving concrete; do
        out="$tmp/overlays-$line.yaml"
        [ -f "$out" ] || continue
        if grep -n 'OVERLAY-SETS' "$out" > "$tmp/err"; then
            fail "overlays/$line leaves base placeholders: $(head -3 "$tmp/err" | tr '\n' ' ')"
        else
            pass "overlays/$line sets every Secret name and key of its line"
        fi
    done
else
    skip "kubectl not found: cannot render the kustomizations (and so cannot validate them)"
fi

# 3. Schema validation (CRDs such as PodMonitor and PrometheusRule have no bundled schema:
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

# 4. Extract the PromQL: the PrometheusRule's groups as a rules file, the dashboard's panel
#    expressions as recording rules (Grafana variables replaced), and the metric names used.
python3 - "$root" "$tmp" <<'PY' || fail "extracting the rules and the dashboard expressions"
import json, re, sys, yaml
root, tmp = sys.argv[1], sys.argv[2]
rule = yaml.safe_load(open(f"{root}/k8s/monitoring/prometheusrule.yaml"))
assert rule["kind"] == "PrometheusRule"
yaml.safe_dump({"groups": rule["spec"]["groups"]}, open(f"{tmp}/rules.yaml", "w"), sort_keys=False)
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

# 5. promtool: syntax and semantics of every expression, then the alert unit tests.
if ! have promtool; then
    skip "promtool not found (apt-get install prometheus): PromQL not checked"
elif [ -f "$tmp/rules.yaml" ]; then
    if promtool check rules "$tmp/rules.yaml" > "$tmp/pt" 2>&1; then
        pass "promtool check rules: PrometheusRule bowmark-cdc ($(grep -o 'SUCCESS: [0-9]* rules' "$tmp/pt"))"
    else
        fail "promtool check rules (PrometheusRule):"; sed 's/^/      /' "$tmp/pt"
    fi
    if promtool check rules "$tmp/dashboard-rules.yaml" > "$tmp/pt" 2>&1; then
        pass "promtool check rules: dashboard queries ($(grep -o 'SUCCESS: [0-9]* rules' "$tmp/pt"))"
    else
        fail "promtool check rules (dashboard queries):"; sed 's/^/      /' "$tmp/pt"
    fi
    cp k8s/monitoring/tests/alerts.test.yaml "$tmp/"
    if promtool test rules "$tmp/alerts.test.yaml" > "$tmp/pt" 2>&1; then
        pass "promtool test rules k8s/monitoring/tests/alerts.test.yaml"
    else
        fail "promtool test rules k8s/monitoring/tests/alerts.test.yaml:"; sed 's/^/      /' "$tmp/pt"
    fi
fi

# 6. Every metric the alerts and the dashboard use exists: cdc_* in docs/METRICS.md, the
#    others (kube-state-metrics, cAdvisor, Prometheus) from a short allow-list.
if [ -f "$tmp/used.json" ]; then
python3 - "$root" "$tmp" <<'PY'
import json, re, sys
root, tmp = sys.argv[1], sys.argv[2]
used = json.load(open(f"{tmp}/used.json"))
doc = open(f"{root}/docs/METRICS.md").read()
documented = set(re.findall(r"`(cdc_[a-z0-9_]+)`", doc))
histograms = {m for m in documented if re.search(rf"`{m}`\s*\|\s*histogram", doc)}
external = {"up", "kube_pod_status_ready", "kube_deployment_status_replicas_available",
            "container_memory_working_set_bytes"}
keywords = {"and", "or", "unless", "bool", "offset", "le", "inf", "nan"}
bad, checked = [], set()
for name, where in sorted(used.items()):
    if name.lower() in keywords:
        continue
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    if name.startswith("cdc_"):
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
cdc = sorted(n for n in checked if n.startswith("cdc_"))
print(f"PASS  {len(cdc)} cdc_* metric names used by alerts and dashboard are in docs/METRICS.md; "
      f"external: {', '.join(sorted(checked - set(cdc)))}")
PY
[ $? -eq 0 ] || failures=$((failures + 1))
fi

# 7. The pipeline copies parse as the daemon reads them (needs a built binary).
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
