#!/usr/bin/env bash
# Base images of the Xen harness, from Debian packages only:
#   build/xen-test/base/xen.elf          the hypervisor (multiboot ELF)
#   build/xen-test/base/vmlinuz          the Linux kernel (dom0 and guests)
#   build/xen-test/base/.kroot/          the extracted kernel package (modules)
#   build/xen-test/base/.dom0root/       debootstrap minbase + Xen tools + modules
#   build/xen-test/base/dom0-base.cpio.gz  that root as an initramfs
# Cached: rebuilt only when this script or a package version changes.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

host_pkgs debootstrap cpio kmod gzip
apt_ready
KPKG=$(kernel_pkg); [ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64"
XEN_PKGS=(xen-hypervisor-$XENVER-amd64 xen-utils-$XENVER xen-utils-common xenstore-utils)
INCLUDE="xen-utils-$XENVER,xenstore-utils,pciutils,kmod,busybox,iproute2,procps"
# The mirror this machine's apt uses: the first `deb` source for the suite
# bookworm, in apt's reading order (sources.list, then sources.list.d/ by
# name), one-line *.list or deb822 *.sources. XT_MIRROR overrides it.
apt_mirror() {
    local f files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do [ -f "$f" ] && files+=("$f"); done
    [ ${#files[@]} -gt 0 ] || return 0
    printf '%s\n' "${files[@]}" | LC_ALL=C sort -s -t/ -k5 | while read -r f; do
        case "$f" in
        *.sources)  # deb822 stanzas, separated by blank lines
            awk 'function flush() { if (deb && bw && uri != "") { print uri; found = 1; exit } deb = bw = 0; uri = "" }
                 /^[ \t]*#/ { next }
                 /^[ \t]*$/ { flush(); next }
                 tolower($1) == "types:"  { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
                 tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") bw = 1 }
                 tolower($1) == "uris:"   { uri = $2 }
                 tolower($1) == "enabled:" && tolower($2) == "no" { deb = 0 }
                 END { if (!found) flush() }' "$f" ;;
        *)          # deb [options] URI SUITE COMPONENTS...
            awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                               if ($(i + 1) == "bookworm") { print $i; exit } }' "$f" ;;
        esac
    done | head -n1
}
MIRROR=${XT_MIRROR:-$(apt_mirror)}
MIRROR=${MIRROR%/}
[ -n "$MIRROR" ] || die "no 'deb' source for Debian bookworm in /etc/apt/sources.list or /etc/apt/sources.list.d/ (set XT_MIRROR=URL)"

KEY=$( { cat "$XT/mkbase.sh" "$XT/common.sh"; echo "$INCLUDE $MIRROR"
         for p in "$KPKG" "${XEN_PKGS[@]}"; do echo "$p $(candidate "$p")"; done; } | sha256sum | cut -c1-16)
if [ -f "$BASE/.stamp" ] && [ "$(cat "$BASE/.stamp")" = "$KEY" ] && [ -f "$BASE/dom0-base.cpio.gz" ]; then
    log "base images up to date ($KEY)"
    exit 0
fi
t0=$(date +%s)
log "building base images ($KEY); kernel $KPKG, mirror $MIRROR"
rm -rf "$BASE"; mkdir -p "$BASE"

# -- hypervisor and kernel
XDEB=$(fetch "xen-hypervisor-$XENVER-amd64"); KDEB=$(fetch "$KPKG")
mkdir -p "$BASE/xroot" "$BASE/.kroot"
dpkg -x "$XDEB" "$BASE/xroot"; dpkg -x "$KDEB" "$BASE/.kroot"
zcat "$(ls "$BASE"/xroot/boot/xen-$XENVER*-amd64.gz | head -n1)" > "$BASE/xen.elf"
rm -rf "$BASE/xroot"
cp "$(ls "$BASE"/.kroot/boot/vmlinuz-* | head -n1)" "$BASE/vmlinuz"
KREL=$(basename "$(ls -d "$BASE"/.kroot/lib/modules/*/ | head -n1)")
echo "$KREL" > "$BASE/krel"
depmod -b "$BASE/.kroot" "$KREL"   # the package ships no module index

# -- dom0 root
R="$BASE/.dom0root"
log "debootstrap ($INCLUDE)"
timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" bookworm "$R" "$MIRROR" > "$BASE/debootstrap.log" 2>&1 \
    || { tail -n 30 "$BASE/debootstrap.log" >&2; die "debootstrap failed"; }
# debootstrap takes the release's versions; bring every Xen package to the
# candidate (security) version so tools and hypervisor match.
mapfile -t XP < <(chroot "$R" dpkg-query -W -f '${Package}\n' | grep -E '^(xen|libxen)')
mkdir -p "$R/tmp/xdebs"
for p in "${XP[@]}"; do cp "$(fetch "$p")" "$R/tmp/xdebs/"; done
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod 755 "$R/usr/sbin/policy-rc.d"
chroot "$R" sh -c 'dpkg -i /tmp/xdebs/*.deb' > "$BASE/dpkg-xen.log" 2>&1 \
    || { tail -n 30 "$BASE/dpkg-xen.log" >&2; die "dpkg -i of the Xen packages failed"; }
rm -rf "$R/tmp/xdebs"
chroot "$R" dpkg-query -W -f '${Package} ${Version}\n' | grep -E '^(xen|libxen)' > "$BASE/xen-versions"
rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* \
       "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/usr/sbin/policy-rc.d
copy_modules "$BASE/.kroot" "$KREL" "$R" xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-pciback \
    e1000 nvme virtio_pci virtio_net virtio_rng
pack_cpio "$R" "$BASE/dom0-base.cpio.gz"
echo "$KEY" > "$BASE/.stamp"
log "base images built in $(( $(date +%s) - t0 )) s: dom0 base $(du -h "$BASE/dom0-base.cpio.gz" | cut -f1), $(cat "$BASE/xen-versions" | tr '\n' ' ')"
