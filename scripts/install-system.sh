#!/usr/bin/env bash
# Debian packages the node and its tests use: Orthanc (test PACS), dcmtk (storescu/echoscu), dicom3tools (dciodvfy),
# chromium (headless, renders the status page).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
missing=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # headless, for the status page test
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)  # STOW-RS and viewer tests
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)  # fetches the OHIF viewer for its test
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)  # cluster mode's database, started by its tests
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
