#!/usr/bin/env bash
# Debian packages the test suite drives for real, installed when missing:
#   postfix   tests/system/deploy/test_postfix.py starts its own Postfix on loopback
#   systemd   systemd-analyze, for tests/system/deploy/test_systemd_units.py
#   python3   the pipe-transport test runs replygate as an unprivileged user; when the
#             virtualenv's interpreter is not readable by that user, Debian's is used
#   chromium  the portal tests drive a real headless browser
#   prometheus  promtool checks docs/alerts.yml (tests/system/deploy/test_alert_rules.py);
#             the server it brings is never started
#   postgresql  initdb and pg_ctl: tests/system/chaos starts, stops and restarts a server
#             of its own on a free port (never the shared one); the package's own
#             cluster is not needed
# Postfix is preseeded "No configuration": nothing is configured or started system-wide;
# the tests start and stop their own instance. Needs root (or sudo) for apt-get.
# Usage: .ci/system-deps.sh [--check]    (--check: only report what is missing, exit 1 if any)
set -euo pipefail

declare -A PROVIDES=(
  [postfix]=/usr/sbin/postfix
  [systemd]=/usr/bin/systemd-analyze
  [python3]=/usr/bin/python3
  [chromium]=/usr/bin/chromium
  [prometheus]=/usr/bin/promtool
  [postgresql]="/usr/lib/postgresql/*/bin/pg_ctl"
)

present() {  # the file a package provides, a glob allowed (PostgreSQL's path names its version)
  local path
  for path in ${PROVIDES[$1]}; do
    [ -x "$path" ] && return 0
  done
  return 1
}

missing=()
for pkg in postfix systemd python3 chromium prometheus postgresql; do
  present "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "system-deps: missing ${missing[*]}" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "system-deps: need root to install ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

echo "system-deps: installing ${missing[*]}" >&2
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
if [[ " ${missing[*]} " == *" postgresql "* ]] && [ ! -e /etc/postgresql-common/createcluster.conf ]; then
  # Only the binaries: no cluster of the package's own, which would take port 5432.
  $SUDO mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${missing[@]}" >/dev/null

for pkg in "${missing[@]}"; do
  if ! present "$pkg"; then
    echo "system-deps: $pkg installed but ${PROVIDES[$pkg]} is missing" >&2
    exit 1
  fi
done
