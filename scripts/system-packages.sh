#!/usr/bin/env bash
# Debian packages the tests need: unixODBC (pyodbc loads libodbc), the FreeTDS ODBC driver
# for the SQL Server path, SQLite's ODBC driver (pyodbc's own row objects, as SQL Server's
# driver returns them, from a real file), Chromium to look at the Dagster UI as a person
# would, and Debian's GDAL 3.6 (ogrinfo, validate_gpkg.py: the outputs must open cleanly in
# the GDAL counties run). Installed only when missing, and only where we may (root with
# apt-get).
set -euo pipefail
needed=()
for package in unixodbc tdsodbc libsqliteodbc chromium gdal-bin python3-gdal; do
  dpkg -s "$package" >/dev/null 2>&1 || needed+=("$package")
done
[ ${#needed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
else
  echo "note: install ${needed[*]} (Debian/Ubuntu) for the SQL Server and browser tests" >&2
fi
