#!/bin/bash
# Scenario 1: loopback in dom0. `xenpci backend` and `xenpci frontend` both
# in dom0 userspace over the real xenstored, grant device and event channels.
# Checks: enumeration equals dom0's sysfs view of the exported devices;
# config reads and mediated writes as docs/PROTOCOL.md §5/§6 says; hot-add and
# hot-remove during a connection; close and reconnect; after the backend
# stops, no xenpci process, no mapping, devices unbound, golden state back.
. /xt/lib.sh
have_sub backend frontend attach detach

E1000=0000:00:06.0          # the e1000 of the multi-function slot
HOT=$OURS_HOTPLUG           # virtio-net, hot-added and removed
declare -A PRE_CL PRE_DRV
for b in $OURS_BDFS $HOT; do
    [ -e /sys/bus/pci/devices/$b ] || fail "device $b missing in dom0"
    PRE_CL[$b]=$(cfg_byte $b 12); PRE_DRV[$b]=$(drv_of $b)
done

backend_start
"$XENPCI" attach 0 $OURS_BDFS > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach 0 $OURS_BDFS failed"; }
BE=/local/domain/0/backend/pci/0/0

# ---- enumeration vs sysfs
out=$(front_run "lspci -n" 2>&1) || { echo "$out" | tail -n 20; fail "xenpci frontend (lspci -n) failed"; }
echo "$out" | grep -E '^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ' | while read -r l; do ev "frontend lspci -n: $l"; done
for b in $OURS_BDFS; do
    echo "$out" | grep -qF "$(sys_id $b)" || fail "enumeration: $b ($(sys_id $b)) missing from the frontend's lspci -n"
done
ndev=$(echo "$out" | grep -cE '^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] [0-9a-f]{4}: ')
[ "$ndev" -eq 2 ] || fail "enumeration: $ndev devices listed, 2 exported"
ev "enumeration matches sysfs: $(for b in $OURS_BDFS; do echo -n "$b=[$(sys_id $b)] "; done)"

# guest-visible BDF of the e1000, from the backend's vdev-N
V=""
num=$(xenstore-read $BE/num_devs 2>/dev/null) || fail "no $BE/num_devs"
for ((i = 0; i < num; i++)); do
    if [ "$(xenstore-read $BE/dev-$i 2>/dev/null)" = "$E1000" ]; then
        v=$(xenstore-read $BE/vdev-$i 2>/dev/null) || fail "no $BE/vdev-$i"
        V="${v%.*}.$(( 16#${v##*.} ))"
    fi
done
[ -n "$V" ] || fail "no vdev for $E1000 in $BE"
ev "$E1000 is $V for the frontend"

# ---- config reads (§5)
want=$(printf '%04x%04x' $((16#$(cut -c3- /sys/bus/pci/devices/$E1000/device))) $((16#$(cut -c3- /sys/bus/pci/devices/$E1000/vendor))))
out=$(front_run "read $V 0 4" 2>&1)
echo "$out" | grep -qi "$want" || fail "read $V 0 4: expected $want, got: $(echo $out)"
ev "read $V 0 4 -> $(echo $out)"
out=$(front_run "read $V 1 2" 2>&1)
echo "$out" | grep -qiE 'invalid.?offset' || fail "read $V 1 2 (misaligned): expected invalid_offset, got: $(echo $out)"
ev "read $V 1 2 -> $(echo $out)"

# ---- mediated writes (§6), checked on the hardware while the frontend is
# connected (a frontend that closes gets its devices reset to the golden state)
fifo_open
out=$(fifo_ask 2 "write $V 0 2 0x1234" "read $V 0 2")
echo "$out" | grep -qi "8086" || { fifo_close; fail "vendor id write not ignored: $(echo $out)"; }
out=$(fifo_ask 1 "write $V 0x0c 1 0x10" "read $V 0x0c 1")
echo "$out" | grep -qiE '(0x)?0*10\b' || { fifo_close; fail "cache line write not read back: $(echo $out)"; }
[ "$(cfg_byte $E1000 12)" = 16 ] || { fifo_close; fail "cache line write did not reach the device (dom0 sees $(cfg_byte $E1000 12))"; }
ev "vendor write ignored, cache line write reached the device"
orig=$(cfg_dword $E1000 16); size=$(bar0_size $E1000)
sz=$(printf '%08x' $(( (~(size - 1) & 0xffffffff) | (orig & 0xf) )))
out=$(fifo_ask 2 "write $V 0x10 4 0xffffffff" "read $V 0x10 4")
echo "$out" | grep -qi "$sz" || { fifo_close; fail "BAR0 sizing: expected $sz, got: $(echo $out)"; }
[ "$(cfg_dword $E1000 16)" = "$orig" ] || { fifo_close; fail "BAR0 sizing reached the hardware"; }
out=$(fifo_ask 1 "write $V 0x10 4 $(printf 0x%08x $orig)" "read $V 0x10 4")
echo "$out" | grep -qi "$(printf '%08x' $orig)" || { fifo_close; fail "BAR0 not restored to $(printf '%08x' $orig): $(echo $out)"; }
ev "BAR0 sizing reads $sz (size $size), hardware BAR untouched"
st=$(cfg_word $E1000 6)
out=$(fifo_ask 2 "write $V 6 2 0xffff" "read $V 6 2")
[ "$(cfg_word $E1000 6)" = "$st" ] || { fifo_close; fail "status write reached the device"; }
ev "status (RW1C) write dropped: $(echo $out)"
fifo_close

# ---- hot-add / hot-remove while connected (the script is a FIFO)
rm -f /tmp/xt/f.in; mkfifo /tmp/xt/f.in
"$XENPCI" frontend --hypervisor xen --script /tmp/xt/f.in > /tmp/xt/f.out 2>&1 &
echo $! > "$PIDS/front.pid"
exec 7> /tmp/xt/f.in
echo "lspci -n" >&7
listed() { grep -cE '^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] [0-9a-f]{4}: ' /tmp/xt/f.out; }
i=0; while [ "$(listed)" -lt 2 ] && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
[ "$(listed)" -ge 2 ] || { exec 7>&-; fail "frontend reading a FIFO script answered no lspci -n within 30 s"; }
"$XENPCI" attach 0 $HOT > /tmp/xt/attach.log 2>&1 || { cat /tmp/xt/attach.log; fail "xenpci attach 0 $HOT failed"; }
hid=$(sys_id $HOT)
i=0; ok=0
while [ $i -lt 20 ]; do
    echo "lspci -n" >&7; sleep 3; i=$((i + 1))
    grep -qF "$hid" /tmp/xt/f.out && { ok=1; break; }
done
[ $ok = 1 ] || { exec 7>&-; fail "hot-add: $HOT ($hid) not listed by the connected frontend within 60 s"; }
ev "hot-add: frontend lists $(grep -F "$hid" /tmp/xt/f.out | tail -n1)"
"$XENPCI" detach 0 $HOT > /tmp/xt/detach.log 2>&1 || { cat /tmp/xt/detach.log; fail "xenpci detach 0 $HOT failed"; }
i=0; ok=0
while [ $i -lt 20 ]; do
    mark=$(wc -l < /tmp/xt/f.out)
    echo "lspci -n" >&7; sleep 3; i=$((i + 1))
    new=$(tail -n +$((mark + 1)) /tmp/xt/f.out)
    if echo "$new" | grep -qE '^([0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] ' && ! echo "$new" | grep -qF "$hid"; then ok=1; break; fi
done
[ $ok = 1 ] || { exec 7>&-; fail "hot-remove: $HOT still listed 60 s after xenpci detach"; }
ev "hot-remove: $HOT gone from the frontend's listing"
exec 7>&-                  # EOF: the frontend closes its connection and exits
fp=$(cat "$PIDS/front.pid"); i=0
while kill -0 $fp 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
kill -0 $fp 2>/dev/null && fail "frontend did not exit 20 s after the end of its script"
wait $fp; rc=$?; rm -f "$PIDS/front.pid"
[ $rc = 0 ] || fail "frontend exited with $rc"

# ---- reconnect
out=$(front_run "lspci -n" 2>&1) || fail "reconnect: xenpci frontend failed: $(echo "$out" | tail -n 3)"
for b in $OURS_BDFS; do echo "$out" | grep -qF "$(sys_id $b)" || fail "reconnect: $b missing"; done
ev "close and reconnect: both devices listed again, backend state $(xenstore-read $BE/state 2>/dev/null)"

# ---- backend stop: nothing left
backend_stop; rc=$?
[ $rc = 0 ] || fail "xenpci backend exited with $rc on SIGTERM"
sleep 1
left=$(pgrep -x xenpci | tr '\n' ' ')
[ -z "$left" ] || fail "xenpci processes left: $left"
maps=$(grep -l -E '/dev/xen/(gntdev|gntalloc)' /proc/[0-9]*/maps 2>/dev/null | tr '\n' ' ')
[ -z "$maps" ] || fail "grant mappings left in: $maps"
st=$(xenstore-read $BE/state 2>/dev/null || echo gone)
case "$st" in 5|6|gone) ;; *) fail "backend xenstore state $st after stop";; esac
for b in $OURS_BDFS $HOT; do
    [ "$(drv_of $b)" = "${PRE_DRV[$b]}" ] || fail "$b bound to $(drv_of $b) after stop (was ${PRE_DRV[$b]})"
    [ "$(cfg_byte $b 12)" = "${PRE_CL[$b]}" ] || fail "$b: cache line $(cfg_byte $b 12) after release, golden ${PRE_CL[$b]}"
    [ $(( $(cfg_word $b 4) & 4 )) = 0 ] || fail "$b: bus master still on after release"
done
ev "after stop: no xenpci process, no grant mapping, backend state $st, devices unbound with golden config"
exit 0
