#!/usr/bin/env bash
# The OHIF viewer (its built app from the npm registry) and playwright-core, for the viewer test; into .viewer/.
set -euo pipefail
cd "$(dirname "$0")/.."
OHIF_VERSION=3.13.2
PLAYWRIGHT_VERSION=1.65.1
if [ -f .viewer/ohif/index.html ] && [ -d .viewer/node_modules/playwright-core ]; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "npm not found: the viewer test will be skipped" >&2; exit 0; }
rm -rf .viewer && mkdir -p .viewer
(cd .viewer && npm pack --silent "@ohif/app@${OHIF_VERSION}" >/dev/null && tar xzf "ohif-app-${OHIF_VERSION}.tgz" \
  && mv package/dist ohif && rm -rf package "ohif-app-${OHIF_VERSION}.tgz")
npm install --silent --no-audit --no-fund --prefix .viewer "playwright-core@${PLAYWRIGHT_VERSION}" >/dev/null
