#!/bin/bash
# Scenario 5 (issue 12): MSI and MSI-X through our backend, with Linux's own
# drivers in a PV guest: an NVMe drive (MSI-X) and an AHCI disk (MSI only)
# write 1 MiB of random data and read it back equal, a virtio NIC (MSI-X)
# comes up; the guest's /proc/interrupts shows the MSI/MSI-X pirqs
# counting; drivers are unbound and bound again and nvme is removed and
# loaded again (MSI-X disabled and re-enabled). Then the same workload in the
# same boot through Linux's xen-pciback, and the difference reported. Xen's
# log must show no warning caused by us.
. /xt/lib.sh
have_sub backend attach detach

# guest_report NAME TAG STRICT: the guest's workload lines, as evidence. With
# STRICT=1 (our backend) a data mismatch, a missing disk, a driver without its
# MSI/MSI-X interrupt lines or interrupts that do not count fail the
# scenario; with STRICT=0 (Linux's pciback, the reference) they are reported.
guest_report() {
    local g=$1 tag=$2 strict=$3 l log n k
    short() { if [ "$strict" = 1 ]; then fail "$tag: $*"; else ev "$tag falls short: $*"; fi; }
    log=$(guest_log "$g")
    tr -d '\r' < "$log" | grep -E '^@@XT (blk|net|irq|cycle|io-time|devices)' > /tmp/xt/s5-$tag.lines
    while read -r l; do ev "$tag: ${l#@@XT }"; done < /tmp/xt/s5-$tag.lines
    guest_block "$g" interrupts | while read -r l; do ev "$tag /proc/interrupts: $l"; done
    tr -d '\r' < "$log" | grep -E 'msix|MSI|Xen PCI' | grep -E '^\[' | head -n 8 | while read -r l; do ev "$tag guest kernel: $l"; done
    grep -qE 'MISMATCH|MISSING' /tmp/xt/s5-$tag.lines && short "$(grep -E 'MISMATCH|MISSING' /tmp/xt/s5-$tag.lines | head -n1)"
    n=$(grep -c '^@@XT blk .* ok ' /tmp/xt/s5-$tag.lines)
    [ "$n" -eq 5 ] || short "not every write/read-back passed ($n of 5)"
    grep -q '^@@XT net first .*driver=virtio_net' /tmp/xt/s5-$tag.lines || short "the virtio NIC did not come up"
    for phase in first again; do
        l=$(grep "^@@XT irq $phase " /tmp/xt/s5-$tag.lines)
        for k in nvme-msix ahci-msi virtio-msix; do
            n=$(echo "$l" | sed -nE "s/.*$k=([0-9]+) lines=([0-9]+).*/\2/p")
            [ -n "$n" ] && [ "$n" -gt 0 ] || short "$phase: no ${k#*-} interrupt line for ${k%-*} in /proc/interrupts ($l)"
        done
        for k in nvme-msix ahci-msi; do
            n=$(echo "$l" | sed -nE "s/.*$k=([0-9]+) .*/\1/p")
            [ -n "$n" ] && [ "$n" -gt 0 ] || short "$phase: ${k%-*}'s ${k#*-} interrupts did not count ($l)"
        done
    done
    # every MSI-X vector the NIC had before the rebind, it has after
    a=$(grep '^@@XT irq first ' /tmp/xt/s5-$tag.lines | sed -nE 's/.*virtio-msix=[0-9]+ lines=([0-9]+).*/\1/p')
    b=$(grep '^@@XT irq again ' /tmp/xt/s5-$tag.lines | sed -nE 's/.*virtio-msix=[0-9]+ lines=([0-9]+).*/\1/p')
    [ "${a:-0}" = "${b:-x}" ] || short "the NIC had ${a:-0} MSI-X vectors before unbind/bind, ${b:-none} after"
    return 0
}

for b in $MSI_BDFS; do [ -e /sys/bus/pci/devices/$b ] || fail "device $b missing in dom0"; done
linux_pciback_off || { pciback_holders; fail "Linux's xen-pciback is loaded and cannot be unloaded: it would serve our guest's backend directory too"; }
xl dmesg -c > /dev/null 2>&1   # from here on, Xen's log is this scenario's

# ---- run 1: our backend
HIDE=$MSI_HIDE backend_start
G=xt-s5-ours
domid=$(guest_create $G "xt_role=msi xt_ndev=3") || exit 1
"$XENPCI" attach "$domid" $MSI_BDFS > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach $domid $MSI_BDFS failed"; }
t0=$(date +%s)
wait_guest $G '^@@XT msi done' 420 > /dev/null || fail "ours: the guest's MSI workload did not finish within 420 s"
ev "ours: workload took $(( $(date +%s) - t0 )) s"
guest_report $G ours 1
if grep -E 'MSI' /tmp/xt/backend.log | grep -qiE 'error'; then
    grep -E 'MSI' /tmp/xt/backend.log | grep -iE 'error' | head -n 5 | while read -r l; do ev "backend: $l"; done
    fail "ours: the backend logged MSI errors"
fi
timeout 90 xl shutdown -w $G > /dev/null 2>&1 || xl destroy $G 2>/dev/null
i=0; while ! guest_gone $G && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
sleep 3
for b in $MSI_BDFS; do
    [ $(( $(cfg_word $b 4) & 4 )) = 0 ] || fail "$b: bus master still on after the guest left"
done
backend_stop || fail "xenpci backend exited with $? on SIGTERM"
xl dmesg -c > /tmp/xt/s5-xen-ours.txt 2>&1
grep -iE 'warn|insecure|error|bad ' /tmp/xt/s5-xen-ours.txt | grep -vE 'nmi_watchdog' > /tmp/xt/s5-xen-warn.txt
while read -r l; do ev "xl dmesg during ours: $l"; done < /tmp/xt/s5-xen-warn.txt
[ -s /tmp/xt/s5-xen-warn.txt ] && fail "Xen logged warnings while our backend served the guest: $(head -n1 /tmp/xt/s5-xen-warn.txt)"
ev "xl dmesg during ours: no warning ($(wc -l < /tmp/xt/s5-xen-ours.txt) lines)"

# ---- run 2: the same workload through Linux's xen-pciback
modprobe xen-pciback || fail "modprobe xen-pciback failed"
for b in $MSI_BDFS; do xl pci-assignable-add "$b" || fail "xl pci-assignable-add $b failed"; done
G=xt-s5-linux
guest_create $G "xt_role=msi xt_ndev=3" $MSI_BDFS > /dev/null || exit 1
t0=$(date +%s)
wait_guest $G '^@@XT msi done' 420 > /dev/null || fail "linux: the guest's MSI workload did not finish within 420 s"
ev "linux: workload took $(( $(date +%s) - t0 )) s"
guest_report $G linux 0
timeout 90 xl shutdown -w $G > /dev/null 2>&1 || xl destroy $G 2>/dev/null
i=0; while ! guest_gone $G && [ $i -lt 60 ]; do sleep 1; i=$((i + 1)); done
linux_pciback_off || pciback_holders
xl dmesg -c > /tmp/xt/s5-xen-linux.txt 2>&1
grep -iE 'warn|insecure|error|bad ' /tmp/xt/s5-xen-linux.txt | while read -r l; do ev "xl dmesg during linux: $l"; done

# ---- the difference, line by line (data results, interrupt kinds, cycles)
norm() { sed -E 's/md5=[0-9a-f]+//; s/(rx|tx)_packets=[0-9]+//g; s/cs=[0-9]+//; s/=[0-9]+ lines=/ lines=/g; s/after [0-9]+s//' "$1"; }
if diff <(norm /tmp/xt/s5-ours.lines) <(norm /tmp/xt/s5-linux.lines) > /tmp/xt/s5-diff.txt; then
    ev "difference ours vs Linux's pciback: none (same results, same interrupt kinds and lines)"
else
    while read -r l; do ev "difference ours vs Linux's pciback: $l"; done < /tmp/xt/s5-diff.txt
fi
ev "interrupts ours:  $(grep '^@@XT irq again' /tmp/xt/s5-ours.lines | sed 's/^@@XT irq again //')"
ev "interrupts linux: $(grep '^@@XT irq again' /tmp/xt/s5-linux.lines | sed 's/^@@XT irq again //')"
exit 0
