#!/bin/bash
# Scenario 8 (isolation): what a hostile guest costs its neighbours, through
# `xenpci backend` and, in the same boot, through Linux's xen-pciback.
# Two PV guests, both created before any load (under TCG, xl has crashed and
# hung while a guest hammered dom0; a third guest left dom0 too little memory
# for `xl create`: "unable to XZ decompress kernel"), without devices
# (passthrough enabled); the functions are attached by each backend's own
# command (ours `xenpci attach`, Linux `xl pci-attach`):
#   victim V   $VICTIM (e1000): 4-byte preads of its sysfs config back to
#              back, each timed (xt-iso read): p50/p99/max per window
#   noisy N    $NOISY (virtio-net behind the root port 00:0a.0: PCIe, so a PM
#              capability and FLR): its PMCSR to D3hot and back to D0, back
#              to back (xt-iso toggle); while it toggles, $HOTPLUG
#              (virtio-net) is hot-plugged into it: the time from the attach
#              command to N's first config read of it; then N's frontend
#              closes twice 1 ms apart (device/pci/0/state = 6) and writes
#              child nodes under its state node, while the backend handles
#              the first close
# Windows: quiet (N idle) $QUIET s, then noisy: N toggles, V reads, N gets
# $HOTPLUG, N closes twice after >= $TOGGLE_MIN s of toggling, V reads
# $AFTER s more. Meanwhile dom0's heartbeat (xt-iso heartbeat: wakes every
# 10 ms; the largest gap between wake-ups is how long dom0's own processes
# went without running).
# Neighbours the emulated machine survives: a guest toggling QEMU's NVMe
# between D3hot and D0 in a loop left dom0 unresponsive in 3 of 5 tries (2
# through Linux's pciback, 1 through ours); QEMU 7.2's virtio-net only
# stores the PMCSR state bits.
# Fails when ours lets the neighbour raise the victim's p99 by more than
# 10 ms, or ours' hot-plug time or dom0 heartbeat (largest gap, noisy
# window) is more than 1.5x Linux's; when a figure cannot be measured or a
# run was served by the wrong backend; when a victim's read fails through
# ours.
. /xt/lib.sh
have_sub backend attach
VICTIM=0000:00:03.0 HOTPLUG=0000:00:04.0 NOISY=""
for d in /sys/bus/pci/devices/0000:00:0a.0/0000:*; do [ -e "$d/config" ] && { NOISY=${d##*/}; break; }; done
[ -n "$NOISY" ] || fail "no function behind the root port 0000:00:0a.0 (the noisy neighbour's virtio-net)"
for b in $VICTIM $NOISY $HOTPLUG; do [ -e /sys/bus/pci/devices/$b ] || fail "device $b missing in dom0"; done
QUIET=${XT_ISO_QUIET:-10} TOGGLE_MIN=${XT_ISO_TOGGLE:-8} AFTER=${XT_ISO_AFTER:-5}
MISSING=()
note "victim $VICTIM $(sys_id $VICTIM), noisy $NOISY $(sys_id $NOISY), hot-plug $HOTPLUG $(sys_id $HOTPLUG)"

# ---- time without processes: dom0 has one vCPU, shared with the backend
# A sleep: a read with a timeout on a FIFO nobody writes.
rm -f /tmp/xt/s8-nap; mkfifo /tmp/xt/s8-nap; exec {NAP}<> /tmp/xt/s8-nap
nap() { read -r -t "$1" -u $NAP _; }
now_us() { local t=$EPOCHREALTIME; echo $(( 10#${t/./} )); }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
ms() { awk -v u="$1" 'BEGIN { if (u == "") print "?"; else printf "%.2f", u / 1000 }'; }
num() { [[ $1 =~ ^[0-9]+$ ]] && echo "$1" || echo 0; }
field() { sed -n "s/.*[ ]$1=\([0-9]*\).*/\1/p" <<< " $2"; }
# A guest's console followed on its own fd (xenconsoled's log), read with
# builtins only: con_wait NAME REGEX SECONDS sets LINE and LINE_T (dom0's
# $EPOCHREALTIME when read; looked at every 20 ms).
declare -A CON_FD CON_PART
con_open() {
    local fd
    exec {fd}< "$(guest_log "$1")" || return 1
    CON_FD[$1]=$fd; CON_PART[$1]=""
}
con_wait() {
    local name=$1 re=$2 end=$(( ${EPOCHREALTIME%.*} + $3 )) fd=${CON_FD[$1]} l
    while [ "${EPOCHREALTIME%.*}" -lt $end ]; do
        if IFS= read -r -u "$fd" l; then
            l=${CON_PART[$name]}$l; CON_PART[$name]=""; l=${l%$'\r'}
            [[ $l =~ $re ]] && { LINE=$l; LINE_T=$EPOCHREALTIME; return 0; }
        else
            CON_PART[$name]+=$l
            nap 0.02
        fi
    done
    return 1
}
# gcmd NAME DOMID "VERB [ARG]" REGEX: a command to the guest (xenstore
# data/xt-cmd, which it watches), then its console line matching REGEX
# (60 s) in LINE.
SEQ=0
gcmd() {
    SEQ=$((SEQ + 1))
    xenstore-write /local/domain/$2/data/xt-cmd "$SEQ $3" || fail "xenstore-write data/xt-cmd of dom$2 failed"
    con_wait "$1" "$4" 60 || fail "$1: no '$4' within 60 s of the command '$3'"
}
hb_start() {
    xt-iso heartbeat 10000 600 "$1" > /tmp/xt/s8-hb 2>&1 &
    echo $! > "$PIDS/s8-hb.pid"
}
hb_stop() { # the heartbeat's line in HB_LINE (not in a subshell: it waits for its child)
    local p
    p=$(cat "$PIDS/s8-hb.pid"); kill -USR1 "$p"; wait "$p"; rm -f "$PIDS/s8-hb.pid"
    HB_LINE=$(grep '^@@XT iso-heartbeat ' /tmp/xt/s8-hb)
}

# pciback_off: Linux's xen-pciback gone; a guest's backend directory can
# linger for a moment after `xl destroy`, so a few tries.
pciback_off() {
    local i=0
    while ! linux_pciback_off 2> /dev/null; do
        i=$((i + 1)); [ $i -lt 20 ] || { pciback_holders; return 1; }; sleep 1
    done
}
# served KIND DOMID: fail unless that backend serves the guest's directory.
served() {
    local be=/sys/bus/xen-backend/devices/pci-$2-0 drv
    drv=$([ -L $be/driver ] && basename "$(readlink $be/driver)" || echo none)
    if [ "$1" = ours ]; then
        [ ! -d /sys/module/xen_pciback ] && [ "$drv" = none ] || fail "ours: Linux's pciback is loaded (xenbus driver of dom$2: $drv)"
        grep -q "dom$2 connected" /tmp/xt/backend.log || fail "ours: our backend's log has no connection of dom$2"
    else
        [ "$drv" != none ] || fail "linux: no xenbus driver on $be (who served dom$2?)"
        [ ! -f "$PIDS/backend.pid" ] || fail "linux: our backend was running"
    fi
}

# mk_guest NAME ROLE: a guest of the scenario (xt_role=iso xt_iso=ROLE), its
# domid in DOMID once it is up. One more try when `xl create` fails: under
# TCG it has failed reading a kernel it had read twice before ("unable to XZ
# decompress kernel"), and crashed ("malloc(): unsorted double linked list
# corrupted").
mk_guest() {
    local i l
    DOMID=""
    for i in 1 2; do
        DOMID=$(guest_create $1 "xt_role=iso xt_iso=$2") && break
        note "xl create $1 failed (try $i)"; timeout 60 xl destroy $1 > /dev/null 2>&1; DOMID=""
    done
    [ -n "$DOMID" ] || fail "$kind: xl create $1 failed twice"
    # data/xt-cmd, its command node: the guest's to read
    xenstore-write /local/domain/$DOMID/data/xt-cmd "0 none" && xenstore-chmod /local/domain/$DOMID/data/xt-cmd "n$DOMID" \
        || fail "$kind: cannot make data/xt-cmd of dom$DOMID"
    l=$(wait_guest $1 '^@@XT iso ready' 240) || fail "$kind: $1 was not up within 240 s"
    [[ $l == *" tool=ok"* ]] || fail "$kind: $1 has no xt-iso ($l)"
    con_open $1 || fail "$kind: no console log of $1"
}

# half KIND: one backend, the whole workload; results in /tmp/xt/s8-KIND
# as KEY=VALUE lines.
half() {
    local kind=$1 cmd v n vd nd t0 t1 t_noise l rq rn tg hq hn hp="" aq drv res=/tmp/xt/s8-$1 i rc
    if [ "$kind" = ours ]; then
        pciback_off || fail "ours: Linux's xen-pciback cannot be unloaded: it would serve our guests' backend directories too"
        for b in $VICTIM $NOISY $HOTPLUG; do [ "$(drv_of $b)" = none ] || fail "ours: $b is bound to $(drv_of $b)"; done
        HIDE="($VICTIM)($NOISY)($HOTPLUG)" backend_start
        cmd="$XENPCI attach" drv="xenpci backend"
    else
        [ ! -f "$PIDS/backend.pid" ] || fail "linux: our backend still running"
        modprobe xen-pciback || fail "modprobe xen-pciback failed"
        for b in $VICTIM $NOISY $HOTPLUG; do
            xl pci-assignable-add "$b" 2> /dev/null
            [ "$(drv_of $b)" = pciback ] || fail "linux: $b is bound to $(drv_of $b), not pciback"
        done
        cmd="xl pci-attach" drv="Linux's pciback"
    fi
    # Every guest before any load, one at a time (each up before the next
    # `xl create`).
    v=xt-s8-$kind-victim n=xt-s8-$kind-noisy
    note "dom0 $(grep MemAvailable /proc/meminfo | tr -s ' ')"
    mk_guest $v victim; vd=$DOMID
    mk_guest $n noisy; nd=$DOMID
    # The victim's and the neighbour's functions, one after the other; the
    # victim's attach timed as the quiet hot-plug.
    t0=$EPOCHREALTIME
    timeout 120 $cmd "$vd" $VICTIM > /tmp/xt/s8-attach.log 2>&1 || { cat /tmp/xt/s8-attach.log >&2; fail "$kind: $cmd $vd $VICTIM failed"; }
    con_wait $v '^@@XT iso-hp (seen|none)' 180 && [[ $LINE == *" seen "* ]] || fail "$kind: the victim read no config of $VICTIM within 180 s of $cmd (${LINE:-nothing})"
    aq=$(ms_between $t0 $LINE_T)
    timeout 120 $cmd "$nd" $NOISY > /tmp/xt/s8-attach.log 2>&1 || { cat /tmp/xt/s8-attach.log >&2; fail "$kind: $cmd $nd $NOISY failed"; }
    con_wait $n '^@@XT iso-hp (seen|none)' 180 && [[ $LINE == *" seen "* ]] || fail "$kind: the neighbour read no config of $NOISY within 180 s of $cmd (${LINE:-nothing})"
    served $kind $vd; served $kind $nd
    note "$kind: victim d$vd, neighbour d$nd; the victim's attach took $aq ms"

    # ---- quiet window: the neighbour idle
    hb_start quiet
    gcmd $v $vd "read quiet" '^@@XT iso-read start win=quiet'
    nap $QUIET
    gcmd $v $vd stop '^@@XT iso-read win=quiet '; rq=$LINE
    hb_stop; hq=$HB_LINE

    # ---- noisy window
    gcmd $n $nd toggle '^@@XT iso-toggle (start|none)'
    [[ $LINE == *" start "* ]] || fail "$kind: the neighbour cannot toggle $NOISY: $LINE"
    ev "$kind: ${LINE#@@XT }"
    t_noise=$(now_us)
    hb_start noisy
    gcmd $v $vd "read noisy" '^@@XT iso-read start win=noisy'
    nap 2
    gcmd $n $nd hp '^@@XT iso ack [0-9]+ hp'
    t0=$EPOCHREALTIME
    timeout 180 $cmd "$nd" $HOTPLUG > /tmp/xt/s8-attach.log 2>&1; rc=$?
    t1=$EPOCHREALTIME
    if [ $rc != 0 ]; then
        MISSING+=("$kind: $cmd $nd $HOTPLUG failed (exit $rc) under load")
        sed 's/^/  attach: /' /tmp/xt/s8-attach.log >&2
    elif con_wait $n '^@@XT iso-hp (seen|none)' 180 && [[ $LINE == *" seen "* ]]; then
        hp=$(ms_between $t0 $LINE_T)
        ev "$kind: hot-plug of $HOTPLUG under load: $hp ms from $cmd to the guest's first config read (the command itself $(ms_between $t0 $t1) ms; ${LINE#@@XT iso-hp })"
    else
        MISSING+=("$kind: the neighbour read no config of $HOTPLUG within 180 s of $cmd under load (${LINE:-nothing})")
    fi
    # at least $TOGGLE_MIN s of toggling, then the closes
    i=$(( t_noise + TOGGLE_MIN * 1000000 - $(now_us) ))
    [ $i -gt 0 ] && nap "$(( i / 1000000 )).$(printf %06d $(( i % 1000000 )))"
    gcmd $n $nd stop '^@@XT iso-toggle done'; tg=$LINE
    nap $AFTER
    gcmd $v $vd stop '^@@XT iso-read win=noisy '; rn=$LINE
    hb_stop; hn=$HB_LINE
    if [ "$kind" = ours ]; then
        kill -0 "$(cat "$PIDS/backend.pid")" 2>/dev/null || fail "ours: xenpci backend died during the noisy window: $(tail -n 3 /tmp/xt/backend.log | tr '\n' ' ')"
    fi

    # ---- figures
    {
        echo "q_n=$(field n "$rq") q_p50=$(field p50_us "$rq") q_p99=$(field p99_us "$rq") q_max=$(field max_us "$rq")"
        echo "n_n=$(field n "$rn") n_p50=$(field p50_us "$rn") n_p99=$(field p99_us "$rn") n_max=$(field max_us "$rn")"
        l=0; for w in errors ff mismatch; do l=$(( l + $(num "$(field $w "$rq")") + $(num "$(field $w "$rn")") )); done
        echo "errs=$l"
        echo "hp=$hp aq=$aq"
        echo "hb_q=$(field max_us "$hq") hb_n=$(field max_us "$hn") hb_q99=$(field p99_us "$hq") hb_n99=$(field p99_us "$hn")"
    } | tr ' ' '\n' > $res
    . $res
    ev "$kind (served by $drv): victim $VICTIM config reads: quiet n=$q_n p50=$(ms $q_p50) p99=$(ms $q_p99) max=$(ms $q_max) ms; noisy n=$n_n p50=$(ms $n_p50) p99=$(ms $n_p99) max=$(ms $n_max) ms; p99 increase $(ms $(( n_p99 - q_p99 ))) ms"
    ev "$kind: victim detail: quiet ${rq#@@XT iso-read }"
    ev "$kind: victim detail: noisy ${rn#@@XT iso-read }"
    ev "$kind: neighbour $NOISY: ${tg#@@XT iso-toggle }"
    ev "$kind: hot-plug of $HOTPLUG under load ${hp:-not measured} ms; the victim's own attach (no load) $aq ms"
    ev "$kind: dom0 heartbeat (10 ms period) largest gap quiet $(ms $hb_q) ms, noisy $(ms $hb_n) ms (p99 $(ms $hb_q99) / $(ms $hb_n99) ms)"
    [ "$(num "$q_n")" -ge 100 ] || MISSING+=("$kind: the victim made fewer than 100 reads in the quiet window")
    [ "$(num "$n_n")" -ge 100 ] || MISSING+=("$kind: the victim made fewer than 100 reads in the noisy window")
    [ -n "$hb_q" ] && [ -n "$hb_n" ] || MISSING+=("$kind: no dom0 heartbeat")
    [[ $tg == *" close1=ok close2=ok "* ]] || ev "$kind: the neighbour's closes: ${tg##*close1=}"
    [ "$(num "$(field transitions "$tg")")" -gt 0 ] || MISSING+=("$kind: the neighbour made no D3hot/D0 transition")

    # ---- give everything back
    for g in $v $n; do timeout 60 xl destroy $g > /dev/null 2>&1; done
    for d in $vd $nd; do
        i=0; while { [ -e /sys/bus/xen-backend/devices/pci-$d-0 ] || xenstore-exists /local/domain/0/backend/pci/$d 2>/dev/null; } && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
    done
    for g in $v $n; do eval "exec ${CON_FD[$g]}<&-"; done
    if [ "$kind" = ours ]; then
        backend_stop || fail "ours: xenpci backend exited with $? on SIGTERM"
        cp /tmp/xt/backend.log /tmp/xt/s8-backend.log
    else
        pciback_off || ev "linux: Linux's xen-pciback could not be unloaded after the run"
    fi
}

half ours
half linux

# ---- verdict
. /tmp/xt/s8-ours
o_inc=$(( n_p99 - q_p99 )) o_hp=$hp o_hb=$hb_n o_errs=$errs
. /tmp/xt/s8-linux
l_inc=$(( n_p99 - q_p99 )) l_hp=$hp l_hb=$hb_n
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b <= 0) print ""; else printf "%.2f", a / b }'; }
r_hp=$(ratio "$o_hp" "$l_hp") r_hb=$(ratio "$o_hb" "$l_hb")
ev "verdict: victim p99 increase ours $(ms $o_inc) ms (limit 10 ms), Linux's $(ms $l_inc) ms"
ev "verdict: hot-plug under load ours ${o_hp:-?} ms, Linux's ${l_hp:-?} ms, ours/Linux ${r_hp:-?} (limit 1.5)"
ev "verdict: dom0 heartbeat largest gap under load ours $(ms $o_hb) ms, Linux's $(ms $l_hb) ms, ours/Linux ${r_hb:-?} (limit 1.5)"
why=()
for m in "${MISSING[@]}"; do why+=("not measured: $m"); done
[ "$o_errs" = 0 ] || why+=("ours: $o_errs of the victim's reads failed or read wrong")
[ "$o_inc" -le 10000 ] || why+=("ours raised the victim's p99 by $(ms $o_inc) ms (> 10)")
[ -n "$r_hp" ] && awk -v r="$r_hp" 'BEGIN { exit !(r > 1.5) }' && why+=("ours' hot-plug under load is ${r_hp}x Linux's (> 1.5)")
[ -n "$r_hb" ] && awk -v r="$r_hb" 'BEGIN { exit !(r > 1.5) }' && why+=("ours' dom0 heartbeat gap under load is ${r_hb}x Linux's (> 1.5)")
if [ ${#why[@]} -gt 0 ]; then
    for w in "${why[@]}"; do ev "FAIL: $w"; done
    fail "$(IFS=';'; echo "${why[*]}" | sed 's/;/; /g')"
fi
ev "isolation: ours within every limit"
exit 0
