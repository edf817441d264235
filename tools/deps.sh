#!/usr/bin/env bash
# Installs the Debian packages a target needs, if missing, and says what it did.
# usage: tools/deps.sh PACKAGE...
set -euo pipefail
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: already installed: $*"
    exit 0
fi
if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    echo "deps: missing ${missing[*]} and not root: install them with apt-get (tests needing them will be skipped)" >&2
    exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/xenpci-apt.log 2>&1; then
    echo "deps: apt-get install failed; running apt-get update and retrying"
    $SUDO apt-get update >>/tmp/xenpci-apt.log 2>&1 || true
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >>/tmp/xenpci-apt.log 2>&1 \
        || { echo "deps: could not install ${missing[*]} (log: /tmp/xenpci-apt.log)" >&2; exit 1; }
fi
echo "deps: installed ${missing[*]}"
