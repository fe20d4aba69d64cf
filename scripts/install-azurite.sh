#!/usr/bin/env bash
# Puts Azurite, the Azure Storage emulator (npm, pinned with integrity hashes by
# tools/azurite/package-lock.json), into tools/azurite/node_modules, for the tests of az:// URIs (a
# blob service started on loopback). Needs Node.js 18 or later and npm.
set -euo pipefail
cd "$(dirname "$0")/../tools/azurite"
stamp="node_modules/.kubetune-$(sha256sum package-lock.json | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
npm ci --no-audit --no-fund --loglevel=error >/dev/null
node_modules/.bin/azurite-blob --version
touch "$stamp"
