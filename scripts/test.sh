#!/usr/bin/env bash
# Install everything the tests need (Debian packages and a virtualenv with the Python
# packages) and run the whole suite. Run as root on Debian: the tests spawn real
# processes, switch to `nobody`, and read the proc connector. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
debs="prometheus prometheus-process-exporter chromium openssl util-linux gcc libc6-dev python3-venv systemd"
missing=""
for deb in $debs; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" || missing="$missing $deb"
done
if [ -n "$missing" ]; then
    echo "installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
venv=${ATLAS_TEST_VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -e '.[test]'
"$venv/bin/ruff" check .
"$venv/bin/mypy"  # --strict on atlas_exporter/, as pyproject.toml sets
exec "$venv/bin/python" -m pytest -q -rfEs "$@"
