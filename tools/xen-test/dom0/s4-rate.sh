#!/bin/bash
# Scenario 4: the same Linux guest workload (sysfs `config` reads of the
# e1000: 64 dword config reads per 256-byte read) through Linux's xen-pcifront
# against Linux's kernel pciback and against `xenpci backend`, in one dom0
# boot. Prints both rates and their ratio. The rates come from the guests of
# scenarios 3 and 2; when one of those did not run, it is measured here.
. /xt/lib.sh
if [ ! -s /tmp/xt/rate-linux ]; then
    modprobe xen-pciback || fail "modprobe xen-pciback failed"
    for b in $LINUX_BDFS; do xl pci-assignable-add "$b" 2>/dev/null; done
    guest_create xt-s4-linux "xt_role=linux xt_rate=10" $LINUX_BDFS > /dev/null || exit 1
    r=$(wait_guest xt-s4-linux '^@@XT rate ' 150) && echo "${r#@@XT rate }" > /tmp/xt/rate-linux
    xl destroy xt-s4-linux 2>/dev/null
fi
ops() { sed -n 's/.*ops_per_s=\([0-9]*\).*/\1/p' "$1" 2>/dev/null; }
L=$(ops /tmp/xt/rate-linux)
[ -n "$L" ] && [ "$L" -gt 0 ] || fail "no rate against Linux pciback ($(cat /tmp/xt/rate-linux 2>/dev/null))"
ev "Linux pciback: $(cat /tmp/xt/rate-linux)"
if [ ! -s /tmp/xt/rate-ours ]; then
    have_sub backend attach
    backend_start
    domid=$(guest_create xt-s4-ours "xt_role=linux xt_rate=10") || exit 1
    "$XENPCI" attach "$domid" $OURS_BDFS > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach failed"; }
    r=$(wait_guest xt-s4-ours '^@@XT rate ' 150) && echo "${r#@@XT rate }" > /tmp/xt/rate-ours
    xl destroy xt-s4-ours 2>/dev/null
    backend_stop
fi
O=$(ops /tmp/xt/rate-ours)
[ -n "$O" ] && [ "$O" -gt 0 ] || fail "no rate against xenpci backend ($(cat /tmp/xt/rate-ours 2>/dev/null))"
ev "xenpci backend: $(cat /tmp/xt/rate-ours)"
ev "config reads/s: linux-pciback=$L xenpci-backend=$O ratio(xenpci/linux)=$(awk -v a="$O" -v b="$L" 'BEGIN { printf "%.3f", a / b }')"
exit 0
