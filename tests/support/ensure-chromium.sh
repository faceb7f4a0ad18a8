#!/usr/bin/env bash
# Make sure Debian's chromium (/usr/bin/chromium) is installed for the console's browser test: install
# the `chromium` package when it is missing. Used by `.ci/run` (before the suite, so the download does
# not count against a test's timeout) and by the browser test's fixture.
# Exit status: 0 chromium is there, 1 the install failed, 2 not root (nothing tried).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "chromium is missing and installing it needs root: apt-get install --no-install-recommends chromium" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and there is no apt-get to install it with" >&2
  exit 1
fi
# One installer at a time (dpkg's own lock would make a second one fail rather than wait).
exec 9>/var/lock/pj-ensure-chromium.lock
flock -w 900 9
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends chromium >/dev/null
[ -x /usr/bin/chromium ]
