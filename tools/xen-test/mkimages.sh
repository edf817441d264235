#!/usr/bin/env bash
# mkimages.sh XENPCI: the images that change with our code, on top of mkbase.sh:
#   build/xen-test/images/guest-initrd.gz  busybox + lspci + xen-pcifront/e1000/... modules
#                                          + xenpci and the libxen* it dlopens
#                                          + xt-iso (scenario 8's timing tools)
#   build/xen-test/images/dom0-initrd.gz   dom0-base.cpio.gz + an overlay cpio (/init,
#                                          scenarios, xenpci, xt-syscost, xt-iso, the guest
#                                          kernel and initrd)
# Cached: rebuilt only when the base, these scripts or the xenpci binary change.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
XENPCI=${1:?usage: mkimages.sh PATH-TO-XENPCI}
[ -x "$XENPCI" ] || die "$XENPCI: no such executable"
[ -f "$BASE/.stamp" ] || die "base images missing: run mkbase.sh"
host_pkgs busybox-static cpio kmod binutils gcc libc6-dev

KEY=$( { cat "$BASE/.stamp" "$XT/mkimages.sh" "$XT/common.sh"; find "$XT/dom0" "$XT/guest" -type f | LC_ALL=C sort | xargs cat; sha256sum < "$XENPCI"; } | sha256sum | cut -c1-16)
if [ -f "$IMG/.stamp" ] && [ "$(cat "$IMG/.stamp")" = "$KEY" ] && [ -f "$IMG/dom0-initrd.gz" ]; then
    log "images up to date ($KEY)"
    exit 0
fi
t0=$(date +%s)
R="$BASE/.dom0root"
KREL=$(cat "$BASE/krel")
rm -rf "$IMG"; mkdir -p "$IMG"
strip -o "$IMG/xenpci" "$XENPCI" 2>/dev/null || cp "$XENPCI" "$IMG/xenpci"

# closure ROOTDIR DEST FILE...: FILE (paths inside ROOTDIR) and the shared
# libraries they need, resolved by ROOTDIR's own ldd, copied to DEST.
closure() {
    local root=$1 dest=$2 f l; shift 2
    for f in "$@"; do
        mkdir -p "$dest$(dirname "$f")"; cp -L "$root$f" "$dest$f"
        { chroot "$root" ldd "$f" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r l; do
            [ -e "$root$l" ] || continue
            mkdir -p "$dest$(dirname "$l")"; cp -L "$root$l" "$dest$l"
        done
    done
}
# The libraries xenpci dlopens at run time (and theirs).
XENLIBS=()
for l in libxenstore.so.4 libxengnttab.so.1 libxenevtchn.so.1 libxenctrl.so.4.17; do
    p=$(ls "$R"/usr/lib/x86_64-linux-gnu/$l 2>/dev/null | head -n1 || true)
    [ -n "$p" ] || die "$l not in the dom0 root"
    XENLIBS+=("${p#$R}")
done
# xenpci runs inside the dom0 root's userland (same Debian release as the
# build host): resolve its libraries there.
mkdir -p "$R/usr/local/bin"; cp "$IMG/xenpci" "$R/usr/local/bin/xenpci"
if chroot "$R" ldd /usr/local/bin/xenpci 2>&1 | grep -q 'not found'; then
    chroot "$R" ldd /usr/local/bin/xenpci >&2; die "xenpci needs libraries the dom0 root lacks"
fi

# ---------------------------------------------------------------- guest
G="$IMG/.guest-root"
mkdir -p "$G"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,usr/share/misc,proc,sys,dev,tmp,run,etc}
cp /bin/busybox "$G/bin/busybox"
closure "$R" "$G" /usr/bin/lspci /usr/local/bin/xenpci /usr/bin/xenstore-read /usr/bin/xenstore-ls "${XENLIBS[@]}"
cp "$R/usr/share/misc/pci.ids" "$G/usr/share/misc/" 2>/dev/null || cp -L "$R"/usr/share/misc/pci.ids "$G/usr/share/misc/" || true
copy_modules "$BASE/.kroot" "$KREL" "$G" xen-pcifront e1000 xen-evtchn xen-gntdev xen-gntalloc xenfs \
    nvme ahci sd_mod virtio_pci virtio_net crc64_rocksoft_generic crct10dif_generic
cp "$XT/guest/init" "$G/init"; chmod 755 "$G/init"
# scenario 8's timing tools (dom0/isolation.c), in the guests and in dom0
cc -O2 -Wall -static -o "$IMG/xt-iso" "$XT/dom0/isolation.c" || die "cc dom0/isolation.c failed"
cp "$IMG/xt-iso" "$G/usr/local/bin/xt-iso"
pack_cpio "$G" "$IMG/guest-initrd.gz"

# ---------------------------------------------------------------- dom0 overlay
O="$IMG/.dom0-overlay"
mkdir -p "$O/xt/guest" "$O/usr/local/bin"
cp "$XT/dom0/init" "$O/init"; chmod 755 "$O/init"
cp "$XT"/dom0/*.sh "$O/xt/"
cp "$BASE/vmlinuz" "$O/xt/guest/vmlinuz"
cp "$IMG/guest-initrd.gz" "$O/xt/guest/initrd.gz"
cp "$IMG/xenpci" "$O/usr/local/bin/xenpci"
# scenario 4's system-call cost probe (dom0 has no compiler)
cc -O2 -Wall -static -o "$O/usr/local/bin/xt-syscost" "$XT/dom0/syscost.c" || die "cc dom0/syscost.c failed"
cp "$IMG/xt-iso" "$O/usr/local/bin/xt-iso"
pack_cpio "$O" "$IMG/dom0-overlay.cpio.gz"
# The kernel unpacks concatenated cpio archives in order: overlay wins.
cat "$BASE/dom0-base.cpio.gz" "$IMG/dom0-overlay.cpio.gz" > "$IMG/dom0-initrd.gz"
rm -rf "$G" "$O" "$R/usr/local/bin/xenpci"
echo "$KEY" > "$IMG/.stamp"
log "images built in $(( $(date +%s) - t0 )) s: guest $(du -h "$IMG/guest-initrd.gz" | cut -f1), dom0 $(du -h "$IMG/dom0-initrd.gz" | cut -f1)"
