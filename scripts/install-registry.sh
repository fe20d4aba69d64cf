#!/usr/bin/env bash
# Puts CNCF Distribution's registry server (Debian's docker-registry, the package's binary only: no
# service, no root-owned files) into tools/registry/, for the tests of spec.output.oci (a registry on
# loopback, tests/ociregistry.py). apt checks the package against Debian's signed index.
set -euo pipefail
cd "$(dirname "$0")/.."
version="2.8.2+ds1-1"
target=tools/registry/docker-registry
stamp=tools/registry/.installed
if [ -x "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then exit 0; fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
chmod 777 "$scratch"  # apt's download sandbox user writes here
if ! (cd "$scratch" && apt-get download "docker-registry=$version" >/dev/null 2>&1); then
  apt-get update -qq >/dev/null  # a fresh machine without package lists
  (cd "$scratch" && apt-get download "docker-registry=$version" >/dev/null)
fi
dpkg-deb -x "$scratch"/docker-registry_*.deb "$scratch/root"
install -D -m 755 "$scratch/root/usr/bin/docker-registry" "$target"
"$target" --version
echo "$version" > "$stamp"
