#!/usr/bin/env bash
# Install `prometheus` and `promtool` from Debian's `prometheus` package when either is missing
# (deploy/checks/30-prometheus.sh and tests/integration/test_observability.py need them).
# Idempotent: does nothing when both are on PATH. Never leaves the packaged daemon running:
# a policy-rc.d (Debian's own switch for "install, do not start") keeps the package's scripts
# from starting it, and anything the installation started anyway is stopped and disabled.
# Needs root (or sudo) and apt-get; recommends (node-exporter) are not installed.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
# shellcheck source=deploy/tools/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install install-prometheus prometheus

sudo=()
if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi

# The packaged service must not stay running (it would hold :9090 and scrape nothing useful).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  "${sudo[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
if [ -x /etc/init.d/prometheus ]; then
  "${sudo[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  if command -v update-rc.d >/dev/null 2>&1; then
    "${sudo[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi
pidfile=/run/prometheus/prometheus.pid
if [ -s "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    "${sudo[@]}" kill "$pid" || true
  fi
fi

command -v promtool >/dev/null 2>&1 || {
  echo "install-prometheus: promtool still missing after the install" >&2
  exit 1
}
echo "install-prometheus: $(prometheus --version 2>&1 | head -n 1)"
