#!/usr/bin/env bash
# Install atlas-exporter into a virtualenv (default /opt/atlas-exporter) and link
# /usr/local/bin/atlas-exporter. With --run, start it with the remaining arguments.
#   ./scripts/install.sh --run                       # as root: serve :9858/metrics with defaults
#   ATLAS_PREFIX=$HOME/.atlas ./scripts/install.sh   # unprivileged install
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${ATLAS_PREFIX:-/opt/atlas-exporter}
run=0
if [ "${1:-}" = "--run" ]; then run=1; shift; fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "atlas-exporter: error: python3 3.11 or newer is required" >&2
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    else
        echo "atlas-exporter: error: python3 venv support is missing (apt-get install python3-venv)" >&2
        exit 1
    fi
fi
[ -x "$prefix/bin/pip" ] || python3 -m venv "$prefix"
"$prefix/bin/pip" install --quiet --disable-pip-version-check "$here"
if [ -w /usr/local/bin ]; then
    ln -sf "$prefix/bin/atlas-exporter" /usr/local/bin/atlas-exporter
fi
echo "installed: $prefix/bin/atlas-exporter ($("$prefix/bin/atlas-exporter" --version))"
if [ "$run" = 1 ]; then
    exec "$prefix/bin/atlas-exporter" "$@"
fi
