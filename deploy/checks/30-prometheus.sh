#!/usr/bin/env bash
# deploy/prometheus and deploy/grafana, checked with the real tools (run from the repo root):
# - `promtool check rules` and `promtool test rules` (every alert firing and not firing);
# - the dashboard: valid JSON, a Prometheus data-source variable, every panel with a data
#   source and queries with an `expr`, and every expr valid PromQL (promtool parses them as
#   recording rules, Grafana's $__rate_interval read as 5m).
# promtool comes from Debian's `prometheus` package, installed by
# deploy/tools/install-prometheus.sh when missing. PROMETHEUS_DIR and DASHBOARD point the check
# at other copies (how a broken expression is shown to fail).
set -euo pipefail

rules_dir=${PROMETHEUS_DIR:-deploy/prometheus}
dashboard=${DASHBOARD:-deploy/grafana/herald.json}

if ! command -v promtool >/dev/null 2>&1; then
  bash deploy/tools/install-prometheus.sh
fi
echo "promtool: $(promtool --version 2>&1 | head -n 1)"

promtool check rules "$rules_dir/rules.yml"
promtool test rules "$rules_dir/rules.test.yml"

python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" - "$dashboard" "$work/dashboard-rules.yml" "$work/titles" <<'PY'
"""Check the dashboard's structure; write its queries as recording rules for promtool."""
import json
import sys

path, rules_out, titles_out = sys.argv[1], sys.argv[2], sys.argv[3]
problems = []
try:
    with open(path) as f:
        dashboard = json.load(f)
except (OSError, ValueError) as exc:
    sys.exit(f"{path}: not valid JSON: {exc}")

variables = dashboard.get("templating", {}).get("list", [])
if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in variables):
    problems.append("no Prometheus data-source variable in templating.list")
names = {v.get("name") for v in variables}

exprs = []
ids = set()
panels = dashboard.get("panels") or []
if not panels:
    problems.append("no panels")
for panel in panels:
    title = panel.get("title") or f"panel {panel.get('id')}"
    if panel.get("id") in ids:
        problems.append(f"{title}: duplicate id {panel.get('id')}")
    ids.add(panel.get("id"))
    if panel.get("type") == "row":
        continue
    datasource = panel.get("datasource")
    uid = datasource.get("uid") if isinstance(datasource, dict) else datasource
    if not uid:
        problems.append(f"{title}: no datasource")
    elif str(uid).startswith("$") and str(uid).strip("${}") not in names:
        problems.append(f"{title}: datasource {uid} is not a dashboard variable")
    targets = panel.get("targets") or []
    if not targets:
        problems.append(f"{title}: no targets")
    for target in targets:
        expr = (target.get("expr") or "").strip()
        if not expr:
            problems.append(f"{title}: target {target.get('refId')} has no expr")
            continue
        exprs.append((title, expr.replace("$__rate_interval", "5m").replace("$__range", "1h")))

if problems:
    sys.exit(f"{path}:\n  " + "\n  ".join(problems))
with open(rules_out, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, expr) in enumerate(exprs):
        f.write(f"      # {title}\n      - record: dashboard:query_{i}\n")
        f.write(f"        expr: {json.dumps(expr)}\n")
with open(titles_out, "w") as f:
    f.writelines(f"{i} {title}: {expr}\n" for i, (title, expr) in enumerate(exprs))
print(f"{path}: {len(panels)} panels, {len(exprs)} queries, structure ok")
PY
# Each query as a recording rule: promtool reports the panel's expression that does not parse.
if ! promtool check rules "$work/dashboard-rules.yml" >"$work/out" 2>&1; then
  cat "$work/out" >&2
  grep -o 'dashboard:query_[0-9]*' "$work/out" | sed 's/.*_//' | sort -un | while read -r i; do
    echo "$dashboard: not valid PromQL: panel $(grep "^$i " "$work/titles" | cut -d' ' -f2-)" >&2
  done
  exit 1
fi
echo "$dashboard: every query is valid PromQL"
