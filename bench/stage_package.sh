#!/usr/bin/env bash
# Lays fmllm out in /tmp/site (first on PYTHONPATH there) as the wheel does: checks/ and fixes/
# inside fmllm_tui. For the GPU machine, where nothing is pip-installed from this checkout.
# Usage (device): bash bench/stage_package.sh [SITE]   (default /tmp/site)
set -euo pipefail
site=${1:-/tmp/site}
mkdir -p "$site"
rm -rf "$site/fmllm_tui"
cp -r fmllm_tui "$site/fmllm_tui"
cp -r checks "$site/fmllm_tui/checks"
cp -r fixes "$site/fmllm_tui/fixes"
