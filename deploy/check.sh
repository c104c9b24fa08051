#!/usr/bin/env bash
# `make deploy-check`: every deploy/checks/*.sh in order, each checking one part of deploy/
# with the real tool (installed under .local/tools the first time). Any failure fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for check in deploy/checks/*.sh; do
  [ -e "$check" ] || continue
  echo "=== $check"
  if ! bash "$check"; then
    echo "FAILED: $check" >&2
    status=1
  fi
done
exit $status
