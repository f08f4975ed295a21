#!/usr/bin/env bash
# Create .venv and install the project (with test extras when called with "test").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/pip install -q -e '.[test]'
  scripts/setup-viewer.sh  # OHIF and playwright-core for the viewer test
else
  .venv/bin/pip install -q -e .
fi
