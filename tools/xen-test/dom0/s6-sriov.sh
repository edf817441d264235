#!/bin/bash
# Scenario 6 (issue 12): an SR-IOV virtual function on real Xen. dom0's nvme
# driver takes the PF (03:00.0, QEMU's NVMe with sriov_max_vfs=2) and enables
# one VF; Linux tells Xen about it (a virtfn). `xenpci backend` claims the VF
# and serves it to a PV guest: the guest's lspci shows the VF's ids and BAR
# as dom0 knows them (the VF's own id registers read ffff, its BARs 0), and
# its nvme driver gets an MSI-X vector (table prepared on a VF, decode taken
# from the PF). QEMU keeps a VF's NVMe controller offline until NVMe
# virtualization management brings it up, so the driver then gives up on the
# controller: the scenario checks the PCI level only.
. /xt/lib.sh
have_sub backend attach detach
PF=0000:03:00.0 VF=0000:03:00.1
S=/sys/bus/pci/devices
[ -e $S/$PF/sriov_totalvfs ] || fail "$PF is not an SR-IOV function"
# The other NVMe drives stay away from dom0's nvme driver.
for d in $S/*; do
    [ "$(cat $d/class)" = 0x010802 ] && [ "$(basename $d)" != $PF ] && echo xen-pciback > $d/driver_override
done
modprobe nvme || fail "modprobe nvme failed"
i=0; while [ "$(drv_of $PF)" != nvme ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
[ "$(drv_of $PF)" = nvme ] || fail "dom0's nvme driver did not take $PF"
echo 0 > $S/$PF/sriov_drivers_autoprobe
echo 1 > $S/$PF/sriov_numvfs || fail "enabling one VF of $PF failed"
i=0; while [ ! -e $S/$VF ] && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
[ -e $S/$VF ] || fail "VF $VF did not appear after sriov_numvfs=1"
read -r s e _ < <(head -n1 $S/$VF/resource)
ev "dom0: $VF physfn=$(basename "$(readlink $S/$VF/physfn)") ids $(cut -c3- $S/$VF/vendor):$(cut -c3- $S/$VF/device), own config reads $(od -An -tx4 -N4 $S/$VF/config | tr -d ' '), BAR0 register $(od -An -tx4 -j16 -N4 $S/$VF/config | tr -d ' '), resource0 $s-$e"
dmesg | grep -iE 'virtfn|sr-?iov|VF' | tail -n 3 | while read -r l; do ev "dom0 kernel: $l"; done

linux_pciback_off || { pciback_holders; fail "Linux's xen-pciback is loaded and cannot be unloaded: it would serve our guest's backend directory too"; }
xl dmesg -c > /dev/null 2>&1
HIDE="($VF)" backend_start
G=xt-s6
domid=$(guest_create $G "xt_role=vf") || exit 1
"$XENPCI" attach "$domid" $VF > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach $domid $VF failed"; }
wait_guest $G '^@@XT vf done' 200 > /dev/null || fail "the guest did not finish its VF checks within 200 s"
guest_block $G lspci-n > /tmp/xt/s6.n
guest_block $G lspci-v > /tmp/xt/s6.v
while read -r l; do ev "guest lspci -n: $l"; done < /tmp/xt/s6.n
while read -r l; do ev "guest lspci -v: $l"; done < /tmp/xt/s6.v
want="$(cut -c3- $S/$VF/vendor):$(cut -c3- $S/$VF/device)"
grep -q " $want" /tmp/xt/s6.n || fail "the guest does not see the VF's ids $want ($(cat /tmp/xt/s6.n))"
bar=$(printf '%x' $((s)))
grep -qi "Memory at $bar " /tmp/xt/s6.v || fail "the guest does not see BAR0 at $bar ($(grep -i 'Memory at' /tmp/xt/s6.v))"
m=$(tr -d '\r' < "$(guest_log $G)" | grep '^@@XT vf msix ' | head -n1)
ev "guest: ${m#@@XT }"
guest_block $G vf-dmesg | while read -r l; do ev "guest kernel: $l"; done
grep -iE 'MSI-X' /tmp/xt/backend.log | while read -r l; do ev "backend: ${l#*\] }"; done
# The VF's controller stays offline ("Device not ready"), so the driver gives
# up before it requests its interrupt: /proc/interrupts may never list it.
# The backend's log says whether MSI-X was enabled on the VF.
grep -q "$VF: MSI-X on: entries" /tmp/xt/backend.log || fail "the guest's nvme driver got no MSI-X vector on the VF (backend: $(grep -i 'MSI-X' /tmp/xt/backend.log | tail -n 1))"
timeout 90 xl shutdown -w $G > /dev/null 2>&1 || xl destroy $G 2>/dev/null
i=0; while ! guest_gone $G && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
backend_stop || fail "xenpci backend exited with $? on SIGTERM"
xl dmesg -c > /tmp/xt/s6-xen.txt 2>&1
grep -iE 'warn|insecure|error|bad ' /tmp/xt/s6-xen.txt > /tmp/xt/s6-warn.txt
while read -r l; do ev "xl dmesg: $l"; done < /tmp/xt/s6-warn.txt
[ -s /tmp/xt/s6-warn.txt ] && fail "Xen logged warnings while our backend served the VF: $(head -n1 /tmp/xt/s6-warn.txt)"
echo 0 > $S/$PF/sriov_numvfs
for d in $S/*; do [ -e $d/driver_override ] && echo > $d/driver_override; done
exit 0
