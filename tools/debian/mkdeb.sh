#!/usr/bin/env bash
# Turns an installed tree (make install DESTDIR=ROOT PREFIX=/usr) into a
# Debian package with dpkg-deb: the Debian layout (compressed manual pages,
# copyright and changelog), DEBIAN/control with the shared-library
# dependencies dpkg-shlibdeps finds, the maintainer scripts and md5sums.
# usage: tools/debian/mkdeb.sh ROOT VERSION ARCH MAINTAINER OUT.deb
set -euo pipefail
root=$(cd "$1" && pwd) version=$2 arch=$3 maintainer=$4 out=$5
here=$(cd "$(dirname "$0")" && pwd)
doc=$root/usr/share/doc/xenpci

strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/xenpci"
gzip -9nf "$root"/usr/share/man/man*/*.[0-9]
install -d "$doc"
install -m 644 "$here/copyright" "$doc/copyright"
# Debian wants a changelog in every package; a native one (no Debian
# revision) names it changelog.gz: this release's entry.
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$here" log -1 --format=%ct 2>/dev/null || date +%s)}")
printf 'xenpci (%s) unstable; urgency=medium\n\n  * Release %s: see the project history.\n\n -- %s  %s\n' \
    "$version" "$version" "$maintainer" "$date" | gzip -9n > "$doc/changelog.gz"

# dpkg-shlibdeps reads debian/control of a source package: a scratch one.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debian"
printf 'Source: xenpci\n\nPackage: xenpci\nArchitecture: any\n' > "$work/debian/control"
depends=$(cd "$work" && dpkg-shlibdeps -O "$root/usr/bin/xenpci" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "mkdeb: dpkg-shlibdeps found no dependencies for usr/bin/xenpci" >&2; exit 1; }

install -d -m 755 "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" -e "s|@SIZE@|$size|" \
    -e "s|@DEPENDS@|$depends|" -e "/^Homepage: @HOMEPAGE@$/d" "$here/control.in" > "$root/DEBIAN/control"
for s in postinst prerm postrm; do install -m 755 "$here/$s" "$root/DEBIAN/$s"; done
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
find "$root" -type d -exec chmod 755 {} +
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "deb: $out"
