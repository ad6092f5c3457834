#!/usr/bin/env bash
# Make sure a redis-server binary exists: the one on PATH, else Debian's package when root.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "genq: installing redis-server (Debian package)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # Debian's package may start a system service; genq runs its own, so leave that one alone.
  exit 0
fi
echo "genq: redis-server not found; install it (e.g. 'sudo apt-get install redis-server' or 'brew install redis') and re-run" >&2
exit 1
