#!/usr/bin/env bash
# Make sure `promtool` (the alert rules' unit-test runner) is on PATH: install Debian's `prometheus`
# package when it is missing. Used by `make test-ops`, `.ci/run` and the tests/ops fixture.
#
# The package would start a Prometheus server (port 9090) from its postinst; a policy-rc.d that
# answers 101 ("action forbidden") stops that, so installing leaves nothing running.
# Exit status: 0 promtool is there, 1 the install failed, 2 not root (nothing tried).
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "promtool is missing and installing it needs root: apt-get install --no-install-recommends prometheus" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "promtool is missing and there is no apt-get to install it with" >&2
  exit 1
fi

# One installer at a time: a second one must not remove the policy-rc.d the first still relies on.
exec 9>/var/lock/pj-ensure-promtool.lock
flock -w 600 9
if command -v promtool >/dev/null 2>&1; then
  exit 0
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

echo "installing promtool (Debian package prometheus, its service not started)" >&2
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 prometheus >/dev/null
}
if ! apt_install; then
  apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
  apt_install
fi
command -v promtool >/dev/null 2>&1
