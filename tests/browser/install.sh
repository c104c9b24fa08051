#!/usr/bin/env bash
# Install the npm packages the browser tests inject into pages (axe-core, pinned in
# tests/browser/package.json and package-lock.json) into .local/tools/browser/node_modules with
# `npm ci`. Idempotent: does nothing when the installed lockfile matches the committed one.
# Needs node and npm (the npm registry).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dest="$root/.local/tools/browser"

if [ -f "$dest/node_modules/axe-core/axe.min.js" ] &&
  cmp -s "$here/package-lock.json" "$dest/package-lock.json"; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "tests/browser/install.sh: npm not found; install Node.js and npm" >&2
  exit 1
fi
mkdir -p "$dest"
cp "$here/package.json" "$here/package-lock.json" "$dest/"
echo "tests/browser/install.sh: npm ci (axe-core) into $dest"
(cd "$dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
test -f "$dest/node_modules/axe-core/axe.min.js" || {
  echo "tests/browser/install.sh: axe-core missing after npm ci" >&2
  exit 1
}
