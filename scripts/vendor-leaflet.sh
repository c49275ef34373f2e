#!/usr/bin/env bash
# Refresh the Leaflet shipped inside the package (countysync_assets/maps/leaflet/): the
# sync-status map must open on a closed county network, so nothing is fetched from a CDN at run
# time. npm checks the tarball against the registry's integrity hash.
set -euo pipefail
version="${1:-1.9.4}"
target="$(cd "$(dirname "$0")/.." && pwd)/countysync_assets/maps/leaflet"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "leaflet@$version" >/dev/null && tar xzf "leaflet-$version.tgz")
cp "$work/package/dist/leaflet.js" "$work/package/dist/leaflet.css" "$work/package/LICENSE" "$target/"
echo "$version" > "$target/VERSION"
echo "Leaflet $version in $target"
