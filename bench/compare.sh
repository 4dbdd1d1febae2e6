#!/usr/bin/env bash
# Side-by-side scrape benchmark: atlas-exporter (default collectors, and with --collector.smaps)
# vs process-exporter vs the C lower bound,
# with N extra processes over M apps (defaults 1000 over 50), in one run.
#   bench/compare.sh [--procs 1000 --apps 50 --scrapes 30]   (as root)
# Environment:
#   ATLAS_BEFORE=REV   also run atlas-exporter as it was at git revision REV (target "before")
#   ATLAS_NO_PE=1      leave process-exporter out (it panics on a process name that is not UTF-8)
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
targets=()
if [ -z "${ATLAS_NO_PE:-}" ]; then
    pe=$(command -v prometheus-process-exporter || command -v process-exporter)
    targets+=(--target "process-exporter=$pe -config.path CFG -web.listen-address 127.0.0.1:19256@http://127.0.0.1:19256/metrics")
fi
if [ -n "${ATLAS_BEFORE:-}" ]; then
    mkdir "$work/before"
    git archive "$ATLAS_BEFORE" | tar -x -C "$work/before"
    python3 -m venv "$work/venv-before"
    "$work/venv-before/bin/pip" install --quiet --disable-pip-version-check "$work/before"
    targets+=(--target "before=$work/venv-before/bin/atlas-exporter --config.file $work/atlas.yml --web.listen-address 127.0.0.1:19902@http://127.0.0.1:19902/metrics")
fi
python3 bench/scrape_bench.py "$@" "${targets[@]}" \
    --target "atlas=$work/venv/bin/atlas-exporter --config.file $work/atlas.yml --web.listen-address 127.0.0.1:19900@http://127.0.0.1:19900/metrics" \
    --target "atlas-smaps=$work/venv/bin/atlas-exporter --collector.smaps --config.file $work/atlas.yml --web.listen-address 127.0.0.1:19901@http://127.0.0.1:19901/metrics" \
    --floor "$work/procscan"
