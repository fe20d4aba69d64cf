#!/usr/bin/env bash
# Puts Debian's prometheus, promtool and prometheus-pushgateway binaries into .venv/bin, for the
# observability tests (a real Prometheus scraping the operator and a trainer, promtool on the
# chart's alert rules). The packages are only unpacked, never installed: no service starts.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ] && [ -x "$bin/prometheus-pushgateway" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
download() { (cd "$work" && apt-get download prometheus prometheus-pushgateway >/dev/null 2>&1); }
if ! download; then
  # A machine whose package lists were never fetched: fetch them once, then try again.
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
  download || { echo "install-prometheus: apt-get download prometheus prometheus-pushgateway failed" >&2; exit 1; }
fi
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus-pushgateway" "$bin/"
"$bin/prometheus" --version 2>&1 | head -n 1
