#!/usr/bin/env bash
# Render a symaudit HTML report in headless Chromium and save a full-page screenshot.
#
#   scripts/screenshot_report.sh REPORT_DIR/index.html [OUT.png] [WIDTHxHEIGHT]
#
# Needs Debian's chromium (`apt-get install -y chromium`). Networking, sync, GPU and the
# sandbox are off (the page is a local file; the sandbox needs user namespaces, absent in
# most containers). Look at the PNG: every figure must load and every table be readable.
set -euo pipefail
html=${1:?usage: $0 REPORT_DIR/index.html [OUT.png] [WIDTHxHEIGHT]}
out=${2:-report-screenshot.png}
size=${3:-1400x3000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z "$browser" ]]; then
    echo "chromium not found: apt-get install -y chromium" >&2
    exit 2
fi
[[ -f "$html" ]] || { echo "no such file: $html" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars \
    --screenshot="$(realpath -m "$out")" --window-size="${size/x/,}" \
    "file://$(realpath "$html")" 2>/dev/null
[[ -s "$out" ]] || { echo "chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
