#!/usr/bin/env bash
# Side-by-side scrape benchmark: atlas-exporter (default collectors, and with --collector.smaps)
# vs process-exporter vs the C lower bound,
# with N extra processes over M apps (defaults 1000 over 50), in one run.
#   sudo bench/compare.sh [--procs 1000 --apps 50 --scrapes 30]
# Needs: gcc, prometheus-process-exporter (apt-get install prometheus-process-exporter).
# atlas-exporter runs from a fresh virtualenv with only its own dependencies, as
# scripts/install.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -o "$work/procscan" bench/procscan.c
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check .
# every scrape takes a fresh snapshot: scrapes within snapshot_max_age_seconds (default 1 s)
# would otherwise share one and make the exporter look cheaper than it is
echo "snapshot_max_age_seconds: 0" > "$work/atlas.yml"
pe=$(command -v prometheus-process-exporter || command -v process-exporter)
python3 bench/scrape_bench.py "$@" \
    --target "process-exporter=$pe -config.path CFG -web.listen-address 127.0.0.1:19256@http://127.0.0.1:19256/metrics" \
    --target "atlas=$work/venv/bin/atlas-exporter --config.file $work/atlas.yml --web.listen-address 127.0.0.1:19900@http://127.0.0.1:19900/metrics" \
    --target "atlas-smaps=$work/venv/bin/atlas-exporter --collector.smaps --config.file $work/atlas.yml --web.listen-address 127.0.0.1:19901@http://127.0.0.1:19901/metrics" \
    --floor "$work/procscan"
