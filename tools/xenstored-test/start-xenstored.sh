#!/usr/bin/env bash
# Starts a real xenstored (Xen 4.17's C daemon) on a host without a
# hypervisor, for the xenstore tests of Sources/XenReal.
#
# usage: tools/xenstored-test/start-xenstored.sh WORKDIR
# prints:  SOCKET=<path>  and  PID=<pid>  (kill PID to stop it)
# exit 0: running; exit 2: cannot run here (the reason on stdout, as
#   "SKIP: ..."); exit 1: it should have run but did not.
#
# How: xenstored -N (no fork) with
# xenstored_stub.c preloaded, which stubs its libxenctrl, libxenevtchn and
# libxengnttab calls and redirects /proc/xen/xsd_port and xsd_kva to files
# here; XENSTORED_RUNDIR puts its socket in WORKDIR. The daemon comes from
# the system (/usr/lib/xen-*/bin/xenstored) or from the Debian package
# xen-utils-4.17, downloaded once with apt-get download into build/.
set -uo pipefail
work=${1:?usage: $0 WORKDIR}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${XENPCI_XENSTORED_CACHE:-$repo/build/xenstored-pkg}
skip() { echo "SKIP: $*"; exit 2; }

find_xenstored() {
    if [ -n "${XENSTORED_BIN:-}" ] && [ -x "$XENSTORED_BIN" ]; then echo "$XENSTORED_BIN"; return; fi
    for f in /usr/lib/xen-*/bin/xenstored /usr/sbin/xenstored "$cache"/usr/lib/xen-*/bin/xenstored; do
        [ -x "$f" ] && { echo "$f"; return; }
    done
}

bin=$(find_xenstored)
if [ -z "$bin" ]; then
    command -v apt-get >/dev/null || skip "no xenstored (xen-utils-4.17 not installed) and no apt-get to download it"
    command -v dpkg >/dev/null || skip "no xenstored (xen-utils-4.17 not installed) and no dpkg to unpack it"
    mkdir -p "$cache/debs"
    if ! (cd "$cache/debs" && apt-get download xen-utils-4.17 >"$cache/apt.log" 2>&1); then
        skip "no xenstored here and 'apt-get download xen-utils-4.17' failed: $(grep -E '^(E|W):' "$cache/apt.log" | head -1)"
    fi
    dpkg -x "$cache"/debs/xen-utils-4.17_*.deb "$cache" || skip "dpkg -x of xen-utils-4.17 failed"
    bin=$(find_xenstored)
    [ -n "$bin" ] || skip "xen-utils-4.17 unpacked into $cache but it has no xenstored"
fi

[ -f /usr/include/xenctrl.h ] || skip "the xenstored stub needs libxen-dev's headers: /usr/include/xenctrl.h is absent"
command -v "${CC:-cc}" >/dev/null || skip "no C compiler (${CC:-cc}) to build the xenstored stub"

mkdir -p "$work/proc" "$work/run"
if ! "${CC:-cc}" -shared -fPIC -O1 -Wall -o "$work/stub.so" "$here/xenstored_stub.c" -ldl >"$work/cc.log" 2>&1; then
    echo "building the xenstored stub failed:"; cat "$work/cc.log"; exit 1
fi
echo 1 >"$work/proc/xsd_port"
truncate -s 4096 "$work/proc/xsd_kva"
rm -f "$work/run/socket"

# timeout: a test run that dies without stopping it does not leave it behind.
XENPCI_STUB_DIR="$work/proc" XENSTORED_RUNDIR="$work/run" LD_PRELOAD="$work/stub.so" \
    setsid timeout "${XENPCI_XENSTORED_LIFETIME:-1800}" "$bin" -N -F "$work/xenstored.pid" -T "$work/trace" \
    </dev/null >"$work/xenstored.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    [ -S "$work/run/socket" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
if [ ! -S "$work/run/socket" ]; then
    echo "xenstored ($bin) did not create $work/run/socket:"; cat "$work/xenstored.log"
    kill "$pid" 2>/dev/null
    exit 1
fi
echo "XENSTORED=$bin"
echo "SOCKET=$work/run/socket"
echo "PID=$pid"
