#!/bin/bash
# Scenario 3: our frontend against Linux's backend.
# Linux's kernel xen-pciback in dom0 serves a PV guest created with pci=[...].
#   run 1 (reference): the guest loads Linux's xen-pcifront; its `lspci -n`
#         and `lspci -v` are the reference (and it measures the config-read
#         rate through Linux's pciback: the Linux half of scenario 4);
#   run 2: the same guest does NOT load xen-pcifront; `xenpci frontend`
#         connects instead and lists the devices.
# PASS when run 2's listing (BDF, class, vendor:device, rev, BARs, ROM,
# capabilities) equals run 1's.
. /xt/lib.sh

# norm: lspci -n / -v text -> one comparable line per fact.
norm() (
    set -f
    dev=""
    re_bdf='^(0000:)?([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) '
    re_id='^[0-9a-f]{4}: [0-9a-f]{4}:[0-9a-f]{4}'
    re_fact='(Memory at|I/O ports at|Expansion ROM at|Capabilities:)'
    while IFS= read -r l; do
        if [[ $l =~ $re_bdf ]]; then
            dev=${BASH_REMATCH[2]}; rest=${l#"${BASH_REMATCH[0]}"}
            if [[ $rest =~ $re_id ]]; then echo "$dev id $(echo $rest)"; dev=""; fi
        elif [[ -n $dev && $l =~ ^[[:space:]] && $l =~ $re_fact ]]; then
            l=${l//\[virtual\]/}; l=${l//\[disabled\]/}
            echo "$dev $(echo $l)"
        fi
    done | LC_ALL=C sort -u
)

modprobe xen-pciback || fail "modprobe xen-pciback failed"
for b in $LINUX_BDFS; do
    [ -e /sys/bus/pci/devices/$b ] || fail "device $b missing in dom0"
    xl pci-assignable-add "$b" || fail "xl pci-assignable-add $b failed"
    note "$b $(sys_id $b) -> driver $(drv_of $b)"
done

# ---- run 1: Linux xen-pcifront
G=xt-s3-linux
guest_create $G "xt_role=linux xt_rate=10" $LINUX_BDFS > /dev/null
wait_guest $G '^@@XT lspci-v END' 240 > /dev/null || fail "run 1 (Linux pcifront): no lspci listing in the guest within 240 s"
guest_block $G lspci-n > /tmp/xt/s3-ref.n
guest_block $G lspci-v > /tmp/xt/s3-ref.v
while read -r l; do ev "guest lspci -n (Linux xen-pcifront <- Linux xen-pciback): $l"; done < /tmp/xt/s3-ref.n
want=$(for b in $LINUX_BDFS; do sys_id $b; done | LC_ALL=C sort)
got=$(sed -E 's/^[^ ]+ //; s/ \(rev [0-9a-f]+\)$//' /tmp/xt/s3-ref.n | LC_ALL=C sort)
[ "$want" = "$got" ] || fail "run 1: the guest's lspci -n ($(echo $got)) is not the assigned devices ($(echo $want))"
if r=$(wait_guest $G '^@@XT rate ' 120); then
    echo "${r#@@XT rate }" > /tmp/xt/rate-linux
    ev "config reads through Linux pciback: ${r#@@XT rate }"
else
    note "no rate from run 1 (scenario 4 will say so)"
fi
xl destroy $G
norm < /tmp/xt/s3-ref.v > /tmp/xt/s3-ref.norm
[ -s /tmp/xt/s3-ref.norm ] || fail "run 1: empty lspci -v listing"
while read -r l; do ev "guest lspci -v (Linux xen-pcifront): $l"; done < /tmp/xt/s3-ref.norm

# ---- run 2: xenpci frontend in the guest
G=xt-s3-ours
guest_create $G "xt_role=ours" $LINUX_BDFS > /dev/null
wait_guest $G '^@@XT ours done' 240 > /dev/null || fail "run 2 (xenpci frontend): the guest did not finish within 240 s"
if tr -d '\r' < "$(guest_log $G)" | grep -q '^@@XT ours unavailable'; then
    fail "xenpci frontend not available"
fi
guest_block $G ours-out > /tmp/xt/s3-ours.out
rc=$(tr -d '\r' < "$(guest_log $G)" | sed -n 's/^@@XT ours frontend rc=//p' | tail -n1)
xl destroy $G 2>/dev/null
grep -E '^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] [0-9a-f]{4}: ' /tmp/xt/s3-ours.out | while read -r l; do
    ev "guest lspci -n (xenpci frontend <- Linux xen-pciback): $l"
done
[ "$rc" = 0 ] || { sed 's/^/  xenpci frontend: /' /tmp/xt/s3-ours.out | tail -n 30; fail "xenpci frontend exited with ${rc:-?}"; }
# both listings of the same kinds of lines: -n ids from `lspci -n`, the rest from -v
{ norm < /tmp/xt/s3-ref.n; cat /tmp/xt/s3-ref.norm; } | LC_ALL=C sort -u > /tmp/xt/s3-ref.all
norm < /tmp/xt/s3-ours.out > /tmp/xt/s3-ours.all
if ! diff -u /tmp/xt/s3-ref.all /tmp/xt/s3-ours.all > /tmp/xt/s3.diff; then
    sed 's/^/  diff (ref=Linux pcifront, ours=xenpci frontend): /' /tmp/xt/s3.diff
    fail "the xenpci frontend's listing differs from Linux xen-pcifront's ($(grep -c '^[-+][^-+]' /tmp/xt/s3.diff) lines)"
fi
ev "listings equal: $(wc -l < /tmp/xt/s3-ref.all) facts (ids, BARs, ROM, capabilities) of $(wc -l < /tmp/xt/s3-ref.n) devices"
exit 0
