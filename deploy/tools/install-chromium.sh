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
# shellcheck source=deploy/tools/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install install-chromium chromium

"$chromium" --version >/dev/null 2>&1 || {
  echo "install-chromium: $chromium does not run after the install (see /tmp/install-chromium.log)" >&2
  exit 1
}
echo "install-chromium: $("$chromium" --version 2>&1 | head -n 1)"
