#!/usr/bin/env bash
# Install Debian's `chromium` (/usr/bin/chromium) when it is missing: the browser tests
# (tests/browser/) drive it headless through Playwright from PyPI, because Playwright's own
# browser download does not work on these machines (no network but the package registries).
# Idempotent: does nothing when /usr/bin/chromium runs. Needs root (or sudo) and apt-get;
# recommends are not installed.
set -euo pipefail

chromium=/usr/bin/chromium
if [ -x "$chromium" ] && "$chromium" --version >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium by hand as $chromium" \
    "(or the browser tests skip)" >&2
  exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-chromium: needs root (or sudo) for apt-get install chromium" >&2
    exit 1
  fi
  sudo=(sudo)
fi

log=/tmp/install-chromium.log
echo "install-chromium: apt-get install chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y --no-install-recommends chromium >"$log" 2>&1; then
  # A stale (or never fetched) package list: refresh it once and try again.
  "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || true
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends chromium >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install-chromium: apt-get install chromium failed (log above)" >&2
    exit 1
  fi
fi

"$chromium" --version >/dev/null 2>&1 || {
  echo "install-chromium: $chromium does not run after the install (see $log)" >&2
  exit 1
}
echo "install-chromium: $("$chromium" --version 2>&1 | head -n 1)"
