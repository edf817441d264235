# Shared by the host-side scripts of the Xen integration harness (sourced).
# Everything they build lands under build/xen-test/ (gitignored via /build/).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
XT="$ROOT/tools/xen-test"
WORK="$ROOT/build/xen-test"
DEBS="$WORK/debs"
BASE="$WORK/base"          # Xen, kernel, dom0 root (slow to build, rarely changes)
IMG="$WORK/images"         # dom0 overlay + guest initramfs (rebuilt with xenpci)
XENVER=4.17

log() { echo "[xen-test] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt lists are needed for apt-cache/apt-get download; fetch them once if
# this machine has none (a fresh machine).
apt_ready() {
    if [ -z "$(apt-cache policy "xen-hypervisor-$XENVER-amd64" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -v none)" ]; then
        log "apt-get update"
        timeout 300 apt-get update -qq || die "apt-get update failed"
    fi
}

# host_pkgs PKG...: install the missing ones (root, Debian).
host_pkgs() {
    local p need=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
    [ ${#need[@]} -eq 0 ] && return 0
    apt_ready
    log "installing host packages: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y --no-install-recommends "${need[@]}" >&2 \
        || die "apt-get install ${need[*]} failed"
}

candidate() { apt-cache policy "$1" | sed -n 's/^ *Candidate: //p'; }

# The versioned kernel package behind linux-image-amd64 (changes with
# security updates; never hard-coded).
kernel_pkg() {
    apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1
}

# fetch PKG: path of PKG's candidate .deb in $DEBS, downloaded if missing.
fetch() {
    local pkg=$1 ver deb
    ver=$(candidate "$pkg")
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate for $pkg"
    mkdir -p "$DEBS"; chmod 0777 "$DEBS" 2>/dev/null || true
    deb=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        log "apt-get download $pkg ($ver)"
        (cd "$DEBS" && timeout 600 apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
        deb=$(ls "$DEBS/${pkg}_${ver//:/%3a}_"*.deb | head -n1)
    fi
    echo "$deb"
}

# copy_modules KROOT KREL DEST MOD...: copy the named modules of the
# extracted kernel KROOT with everything they depend on, then index them.
copy_modules() {
    local kroot=$1 krel=$2 dest=$3; shift 3
    local mdir="$kroot/lib/modules/$krel" m path todo=() seen=" "
    for m in "$@"; do
        local re=${m//[-_]/[-_]}
        path=$(grep -E "(^|/)$re\.ko:" "$mdir/modules.dep" | head -n1 | cut -d: -f1 || true)
        [ -n "$path" ] || die "module $m not found in $krel"
        todo+=("$path")
    done
    while [ ${#todo[@]} -gt 0 ]; do
        path=${todo[0]}; todo=("${todo[@]:1}")
        case "$seen" in *" $path "*) continue ;; esac
        seen="$seen$path "
        mkdir -p "$dest/lib/modules/$krel/$(dirname "$path")"
        cp "$mdir/$path" "$dest/lib/modules/$krel/$path"
        # shellcheck disable=SC2207
        todo+=($(grep -E "^${path//./\\.}:" "$mdir/modules.dep" | cut -d: -f2))
    done
    cp "$mdir"/modules.builtin "$mdir"/modules.builtin.modinfo "$mdir"/modules.order "$dest/lib/modules/$krel/" 2>/dev/null || true
    depmod -b "$dest" "$krel"
}

# newc cpio of DIR, gzip'd, to FILE (deterministic order).
pack_cpio() {
    local dir=$1 out=$2
    (cd "$dir" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) | gzip -6 > "$out.tmp"
    mv "$out.tmp" "$out"
}

hash_files() { cat "$@" | sha256sum | cut -c1-16; }
