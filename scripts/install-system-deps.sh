#!/usr/bin/env bash
# Installs the Debian packages rayetl needs, only those missing: PostgreSQL 15 + PostGIS 3 (the
# private local database), GDAL's command-line tools (benchmark anchors), python3-venv, and
# Node.js + npm (the Makefile installs Azurite, the Azure Blob Storage emulator, with npm).
set -euo pipefail

missing=()
postgis_control=$(ls /usr/share/postgresql/*/extension/postgis.control 2>/dev/null | head -n 1 || true)
[ -n "$postgis_control" ] || missing+=(postgresql-15 postgresql-15-postgis-3)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql-15)
command -v ogr2ogr >/dev/null 2>&1 || missing+=(gdal-bin)
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing system packages: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
