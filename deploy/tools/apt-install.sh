#!/usr/bin/env bash
# apt_install NAME PACKAGE...: install Debian packages for a tool the project needs, as root or
# through sudo, without recommends and without starting any daemon a package ships (a
# policy-rc.d, Debian's own switch for "install, do not start", is in place while it runs).
# A stale or never-fetched package list is refreshed once. Sourced by install-*.sh here.

apt_install() {
  local name=$1
  shift
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "$name: no apt-get here; install $* by hand" >&2
    return 1
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$name: needs root (or sudo) for apt-get install $*" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  local policy=/usr/sbin/policy-rc.d made_policy=0 log="/tmp/$name.log" status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# deploy/tools/apt-install.sh: install without starting\nexit 101\n' |
      "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  echo "$name: apt-get install $* (Debian packages)"
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
      "$@" >"$log" 2>&1; then
    "${sudo[@]}" apt-get update -q >>"$log" 2>&1 || true
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y \
        --no-install-recommends "$@" >>"$log" 2>&1; then
      tail -n 30 "$log" >&2
      echo "$name: apt-get install $* failed (log above)" >&2
      status=1
    fi
  fi
  if [ "$made_policy" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
  return $status
}
