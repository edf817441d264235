#!/bin/bash
# Scenario 2: our backend serving Linux's frontend. A PV guest created by
# `xl create` WITHOUT pci=; devices attached with `xenpci attach`. In the
# guest Linux's xen-pcifront connects to `xenpci backend`; `lspci -n` lists
# exactly the attached devices; e1000 binds and its interface appears;
# `xenpci attach/detach` hot-add and hot-remove show up in the guest; on
# guest shutdown the devices are released and reset. The guest also measures
# its config-read rate (the our-backend half of scenario 4).
. /xt/lib.sh
have_sub backend attach detach

declare -A PRE_CL
for b in $OURS_BDFS $OURS_HOTPLUG; do
    [ -e /sys/bus/pci/devices/$b ] || fail "device $b missing in dom0"
    PRE_CL[$b]=$(cfg_byte $b 12)
done
backend_start
G=xt-s2
domid=$(guest_create $G "xt_role=linux xt_e1000=1 xt_rate=10") || exit 1
"$XENPCI" attach "$domid" $OURS_BDFS > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach $domid $OURS_BDFS failed"; }
note "attached $OURS_BDFS to d$domid"
wait_guest $G '^@@XT lspci-n END' 180 > /dev/null || fail "Linux xen-pcifront listed no devices within 180 s"
guest_block $G lspci-n > /tmp/xt/s2.n
while read -r l; do ev "guest lspci -n (Linux xen-pcifront <- xenpci backend): $l"; done < /tmp/xt/s2.n
want=$(for b in $OURS_BDFS; do sys_id $b; done | LC_ALL=C sort)
got=$(sed -E 's/^[^ ]+ //; s/ \(rev [0-9a-f]+\)$//' /tmp/xt/s2.n | LC_ALL=C sort)
[ "$want" = "$got" ] || fail "the guest's lspci -n ($(echo $got)) is not the attached devices ($(echo $want))"

wait_guest $G '^@@XT net done' 60 > /dev/null || fail "the guest did not finish binding e1000 within 60 s"
net=$(tr -d '\r' < "$(guest_log $G)" | grep '^@@XT net if=' | grep 'driver=e1000' | head -n1)
[ -n "$net" ] || fail "e1000 did not bind in the guest (no network interface)"
ev "guest: ${net#@@XT net }"
irq=$(tr -d '\r' < "$(guest_log $G)" | grep '^@@XT irq ' | head -n1)
ev "guest interrupts after link up: ${irq#@@XT irq } (dom0 sysfs irq of $(echo $OURS_BDFS | cut -d' ' -f1): $(cat /sys/bus/pci/devices/$(echo $OURS_BDFS | cut -d' ' -f1)/irq))"
# e1000_up() raises a link-status interrupt: INTx must reach the guest (pirq = GSI).
n=$(echo "$irq" | sed -nE 's/^@@XT irq [^:]+: *[0-9]+: *([0-9]+) .*/\1/p')
[ -n "$n" ] && [ "$n" -gt 0 ] || fail "no INTx interrupt reached the guest's e1000 after link up (${irq:-no report})"
if r=$(wait_guest $G '^@@XT rate ' 120); then
    echo "${r#@@XT rate }" > /tmp/xt/rate-ours
    ev "config reads through xenpci backend: ${r#@@XT rate }"
fi
wait_guest $G '^@@XT monitor start' 60 > /dev/null || fail "guest monitor did not start"

# hot-add
hid=$(sys_id $OURS_HOTPLUG)
mark=$(guest_lines $G)
"$XENPCI" attach "$domid" $OURS_HOTPLUG > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach $domid $OURS_HOTPLUG failed"; }
l=$(wait_guest $G "^@@XT lspci-change .*${hid#*: }" 90 "$mark") || fail "hot-add: $OURS_HOTPLUG ($hid) did not appear in the guest within 90 s"
ev "hot-add: guest lspci -n now: ${l#@@XT lspci-change }"
# hot-remove
mark=$(guest_lines $G)
"$XENPCI" detach "$domid" $OURS_HOTPLUG > /tmp/xt/detach.log 2>&1 || { cat /tmp/xt/detach.log; fail "xenpci detach $domid $OURS_HOTPLUG failed"; }
i=0; ok=0
while [ $i -lt 90 ]; do
    l=$(tail -n +$((mark + 1)) "$(guest_log $G)" | tr -d '\r' | grep '^@@XT lspci-change' | tail -n1)
    if [ -n "$l" ] && ! echo "$l" | grep -qF "${hid#*: }"; then ok=1; break; fi
    sleep 1; i=$((i + 1))
done
[ $ok = 1 ] || fail "hot-remove: $OURS_HOTPLUG still in the guest 90 s after xenpci detach"
ev "hot-remove: guest lspci -n now: ${l#@@XT lspci-change }"

# guest shutdown: devices released and reset
timeout 90 xl shutdown -w $G > /dev/null 2>&1 || fail "xl shutdown $G did not complete within 90 s"
i=0; while ! guest_gone $G && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
guest_gone $G || fail "guest still there 60 s after xl shutdown"
wait_guest $G '^@@XT shutdown requested' 1 > /dev/null && ev "guest: orderly poweroff on xl shutdown"
sleep 3
for b in $OURS_BDFS $OURS_HOTPLUG; do
    [ "$(drv_of $b)" = none ] || fail "$b bound to $(drv_of $b) after the guest left"
    [ $(( $(cfg_word $b 4) & 4 )) = 0 ] || fail "$b: bus master still on after the guest left (not reset)"
done
st=$(xenstore-read /local/domain/0/backend/pci/$domid/0/state 2>/dev/null || echo gone)
case "$st" in 6|gone) ;; *) fail "backend state $st for the departed guest";; esac
ev "after guest shutdown: devices released (bus master off, unbound), backend state $st"
backend_stop || fail "xenpci backend exited with $? on SIGTERM"
exit 0
