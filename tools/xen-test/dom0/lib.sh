# Helpers of the dom0 scenario scripts (sourced; bash). $XT_N = scenario number.
XENPCI=/usr/local/bin/xenpci
CONSOLE_DIR=/var/log/xen/console
GUEST_KERNEL=/xt/guest/vmlinuz
GUEST_INITRD=/xt/guest/initrd.gz
PIDS=/tmp/xt/pids
mkdir -p "$PIDS"

# Devices (q35 addresses, see tools/xen-test/run.sh):
#   00:03.0 e1000, 01:00.0 NVMe (behind the root port 00:05.0)  -> Linux xen-pciback
#   00:06.0 e1000 + 00:06.1 virtio-rng (multi-function slot), 00:04.0 virtio-net -> our backend
LINUX_BDFS="0000:00:03.0 0000:01:00.0"
OURS_BDFS="0000:00:06.0 0000:00:06.1"
OURS_HOTPLUG="0000:00:04.0"
OURS_HIDE="(0000:00:06.*)(0000:00:04.0)"
# Scenario 5 (MSI/MSI-X): 02:00.0 NVMe (MSI-X, behind the root port 00:07.0),
# 00:08.0 AHCI (MSI only), 00:04.0 virtio-net (MSI-X): ours, then Linux's.
MSI_BDFS="0000:02:00.0 0000:00:08.0 0000:00:04.0"
MSI_HIDE="(0000:02:00.0)(0000:00:08.0)(0000:00:04.0)"

ev() { echo "EVIDENCE $XT_N: $*"; }
note() { echo "  [s$XT_N $(cut -d' ' -f1 /proc/uptime)] $*" >&2; }
fail() { echo "FAIL-REASON: $*" >&2; exit 1; }

# have_sub SUB...: fail unless every xenpci subcommand exists (never fake a pass).
have_sub() {
    local s
    for s in "$@"; do
        # ArgumentParser answers --help even for an unknown word: look for
        # the subcommand's own usage line.
        "$XENPCI" "$s" --help 2>&1 | grep -q "USAGE: xenpci $s" || fail "xenpci $s not available"
    done
}

# ------------------------------------------------------------------ sysfs
sys_id() { # BDF -> "CCCC: VVVV:DDDD" as lspci -n prints it
    local d=/sys/bus/pci/devices/$1
    local c; c=$(cat $d/class)
    echo "${c:2:4}: $(cut -c3- $d/vendor):$(cut -c3- $d/device)"
}
cfg_byte() { # BDF OFF -> byte value (decimal) of dom0's view of config space
    od -An -tu1 -j "$2" -N1 "/sys/bus/pci/devices/$1/config" | tr -d ' '
}
cfg_word() { od -An -tu2 -j "$2" -N2 "/sys/bus/pci/devices/$1/config" | tr -d ' '; }
cfg_dword() { od -An -tu4 -j "$2" -N4 "/sys/bus/pci/devices/$1/config" | tr -d ' '; }
drv_of() { local l=/sys/bus/pci/devices/$1/driver; [ -L $l ] && basename "$(readlink $l)" || echo none; }
bar0_size() { # BDF -> size of resource 0 (decimal)
    local s e; read -r s e _ < <(head -n1 /sys/bus/pci/devices/$1/resource)
    echo $(( e - s + 1 ))
}

# ------------------------------------------------------------------ guests
guest_log() { echo "$CONSOLE_DIR/guest-$1.log"; }
# guest_create NAME EXTRA [PCI...]: a PV guest from the harness' kernel and initrd.
guest_create() {
    local name=$1 extra=$2 pci="" b; shift 2
    for b in "$@"; do pci="$pci${pci:+, }'$b'"; done
    cat > /tmp/xt/$name.cfg <<EOF
name = "$name"
type = "pv"
kernel = "$GUEST_KERNEL"
ramdisk = "$GUEST_INITRD"
extra = "console=hvc0 quiet $extra"
memory = 512
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
EOF
    # Without pci= libxl creates the domain without an IOMMU context and no
    # device can be assigned later: a guest for `xenpci attach` needs this.
    [ -n "$pci" ] && echo "pci = [ $pci ]" >> /tmp/xt/$name.cfg || echo 'passthrough = "enabled"' >> /tmp/xt/$name.cfg
    rm -f "$(guest_log $name)"
    note "xl create $name ($extra${pci:+; pci=$pci})"
    xl create /tmp/xt/$name.cfg > /tmp/xt/$name.create 2>&1 || { cat /tmp/xt/$name.create >&2; fail "xl create $name failed"; }
    xl domid "$name"
}
# wait_guest NAME REGEX TIMEOUT [FROMLINE]: wait for a console line of the
# guest matching REGEX (after line FROMLINE); prints it.
wait_guest() {
    local name=$1 re=$2 t=$3 from=${4:-0} log i=0 hit
    log=$(guest_log "$name")
    while [ $i -lt "$t" ]; do
        if [ -f "$log" ]; then
            hit=$(tail -n +$((from + 1)) "$log" | tr -d '\r' | grep -E -m1 -- "$re" || true)
            [ -n "$hit" ] && { echo "$hit"; return 0; }
        fi
        xl domid "$name" > /dev/null 2>&1 || { sleep 1; hit=$(tail -n +$((from + 1)) "$log" 2>/dev/null | tr -d '\r' | grep -E -m1 -- "$re" || true); [ -n "$hit" ] && { echo "$hit"; return 0; }; return 2; }
        sleep 1; i=$((i + 1))
    done
    return 1
}
guest_lines() { [ -f "$(guest_log "$1")" ] && tr -d '\r' < "$(guest_log "$1")" | wc -l || echo 0; }
# guest_block NAME TAG: the lines between "@@XT TAG BEGIN" and "@@XT TAG END".
guest_block() {
    # (kernel messages can land in the middle: drop printk lines)
    tr -d '\r' < "$(guest_log "$1")" | sed -n "/^@@XT $2 BEGIN/,/^@@XT $2 END/p" | sed '1d;$d' \
        | grep -vE '^\[ *[0-9]+\.[0-9]+\] '
}
guest_gone() { ! xl domid "$1" > /dev/null 2>&1; }

# loopback_dirs_rm: remove dom0's own backend/pci/0 and device/pci/0 (the
# loopback of scenario 1) when no xenpci process uses them. A toolstack
# removes a departed guest's directories; dom0 never departs, so nothing else
# would, and Linux's xen-pciback, loaded later, would take backend/pci/0/0
# for a device of its own (see linux_pciback_off).
loopback_dirs_rm() {
    pgrep -x xenpci > /dev/null && return 0
    xenstore-exists /local/domain/0/backend/pci/0 2>/dev/null || xenstore-exists /local/domain/0/device/pci/0 2>/dev/null || return 0
    note "removing dom0's loopback directories backend/pci/0 and device/pci/0 (no xenpci running)"
    xenstore-rm /local/domain/0/backend/pci/0 2>/dev/null
    xenstore-rm /local/domain/0/device/pci/0 2>/dev/null
    return 0
}
# pciback_stale: a xenbus backend device is still bound to Linux's pciback
# while its xenstore directory is gone (the kernel removes such devices from
# its xenbus watch thread, a moment after the directory goes).
pciback_stale() {
    local d n
    for d in /sys/bus/xen-backend/drivers/*pciback*/pci-*; do
        [ -e "$d" ] || continue
        n=$(cat "$d/nodename" 2>/dev/null) || continue
        xenstore-exists "/local/domain/0/$n" 2>/dev/null || return 0
    done
    return 1
}
# linux_pciback_off: give back what Linux's xen-pciback holds and unload it:
# loaded, it watches backend/pci too and fights our backend for the
# directories `xenpci attach` writes ("Couldn't locate PCI device").
# Every backend/pci/<domid>/<n> directory it finds becomes a xenbus device
# bound to its xenbus driver, and each bound device holds a reference on the
# module: rmmod fails while one is left. Directories no guest uses are
# removed (the kernel then drops their devices): those of domains that are
# gone, and dom0's loopback ones (loopback_dirs_rm). A live guest's directory
# stays: its device keeps the module, rmmod fails, and the caller says so.
linux_pciback_off() {
    local d i=0
    [ -d /sys/module/xen_pciback ] || return 0
    for d in /sys/bus/pci/drivers/pciback/0000:*; do
        [ -e "$d" ] && xl pci-assignable-remove "$(basename "$d")" > /dev/null 2>&1
    done
    for d in $(xenstore-list /local/domain/0/backend/pci 2>/dev/null); do
        if [ "$d" = 0 ]; then
            loopback_dirs_rm
        elif ! xenstore-read /local/domain/$d/domid > /dev/null 2>&1; then
            note "removing backend/pci/$d: domain $d is gone"
            xenstore-rm /local/domain/0/backend/pci/$d 2>/dev/null
        fi
    done
    while pciback_stale && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
    rmmod xen_pciback 2>/dev/null || { note "rmmod xen_pciback failed (refcount $(cat /sys/module/xen_pciback/refcnt 2>/dev/null))"; return 1; }
}
# pciback_holders: what may hold Linux's xen-pciback, as evidence lines on
# stderr (for a scenario that could not unload it): the module's reference
# count and holders, every xenbus backend device with its driver, xenstore
# node and state, the PCI functions pciback's PCI driver has, the backend/pci
# directories with their frontend's domain and state, and the domains.
pciback_holders() {
    local d drv l
    {
        ev "pciback holders: module refcnt=$(cat /sys/module/xen_pciback/refcnt 2>/dev/null || echo unloaded) holders=[$(ls /sys/module/xen_pciback/holders 2>/dev/null | tr '\n' ' ')] lsmod: $(lsmod | awk '$1 == "xen_pciback"' | tr -s ' ')"
        for d in /sys/bus/xen-backend/devices/*; do
            [ -e "$d" ] || continue
            drv=$([ -L "$d/driver" ] && basename "$(readlink "$d/driver")" || echo none)
            ev "pciback holders: xen-backend device $(basename "$d") driver=$drv nodename=$(cat "$d/nodename" 2>/dev/null) state=$(cat "$d/state" 2>/dev/null)"
        done
        for d in /sys/bus/xen-backend/drivers/*pciback*; do
            [ -d "$d" ] && ev "pciback holders: bound to xen-backend driver $(basename "$d"): [$(ls "$d" | grep '^pci-' | tr '\n' ' ')]"
        done
        ev "pciback holders: PCI functions of pciback: [$(ls /sys/bus/pci/drivers/pciback 2>/dev/null | grep '^0000:' | tr '\n' ' ')]"
        for d in $(xenstore-list /local/domain/0/backend/pci 2>/dev/null); do
            for l in $(xenstore-list /local/domain/0/backend/pci/$d 2>/dev/null); do
                ev "pciback holders: xenstore backend/pci/$d/$l state=$(xenstore-read /local/domain/0/backend/pci/$d/$l/state 2>/dev/null) frontend=$(xenstore-read /local/domain/0/backend/pci/$d/$l/frontend 2>/dev/null) (frontend state $(xenstore-read "$(xenstore-read /local/domain/0/backend/pci/$d/$l/frontend 2>/dev/null)/state" 2>/dev/null || echo gone)); domain $d $(xenstore-read /local/domain/$d/domid > /dev/null 2>&1 && echo alive || echo gone)"
            done
        done
        ev "pciback holders: xl list: $(xl list 2>&1 | awk 'NR > 1 { printf "%s(%s) ", $1, $2 }')"
    } >&2
}

# ------------------------------------------------------------------ our backend
backend_start() { # extra args; HIDE= overrides the hide list
    local hide=${HIDE:-$OURS_HIDE}
    note "xenpci backend --hypervisor xen --hide '$hide' $*"
    "$XENPCI" backend --hypervisor xen --hide "$hide" "$@" > /tmp/xt/backend.log 2>&1 &
    echo $! > "$PIDS/backend.pid"
    # Ready once it says it runs (after its claims and takeovers): starting
    # a large static executable in a PV dom0 under TCG took from 3 s to over
    # 30 s on a loaded host, so a fixed wait raced the checks that follow.
    local i=0 pid
    pid=$(cat "$PIDS/backend.pid")
    while ! grep -q 'running on Xen' /tmp/xt/backend.log 2>/dev/null && kill -0 "$pid" 2>/dev/null && [ $i -lt 240 ]; do
        sleep 0.5; i=$((i + 1))
    done
    kill -0 "$pid" 2>/dev/null || { sed 's/^/  backend: /' /tmp/xt/backend.log; fail "xenpci backend exited at start"; }
    grep -q 'running on Xen' /tmp/xt/backend.log || fail "xenpci backend not running 120 s after its start: $(tail -n 3 /tmp/xt/backend.log | tr '\n' ' ')"
    note "backend ready after $((i / 2)) s"
}
backend_stop() { # SIGTERM; returns the exit code (fails after 20 s)
    local pid i=0 rc
    pid=$(cat "$PIDS/backend.pid" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
    kill -0 "$pid" 2>/dev/null && { kill -KILL "$pid"; fail "xenpci backend still running 20 s after SIGTERM"; }
    wait "$pid"; rc=$?
    rm -f "$PIDS/backend.pid"
    return $rc
}
# front_run SCRIPT-LINES...: one `xenpci frontend` session in dom0 running
# the given commands; output on stdout; fails after 60 s.
front_run() {
    printf '%s\n' "$@" > /tmp/xt/front.script
    timeout -k 5 60 "$XENPCI" frontend --hypervisor xen --script /tmp/xt/front.script
}

# A frontend session that stays connected: commands go through a FIFO (fd 7),
# answers land in /tmp/xt/f.out.
fifo_open() {
    rm -f /tmp/xt/f.in; mkfifo /tmp/xt/f.in; : > /tmp/xt/f.out
    "$XENPCI" frontend --hypervisor xen --script /tmp/xt/f.in > /tmp/xt/f.out 2>&1 &
    echo $! > "$PIDS/front.pid"
    exec 7> /tmp/xt/f.in
}
# fifo_ask N CMD...: send the commands, wait (30 s at most) for N more output
# lines, print the new lines.
fifo_ask() {
    local n=$1 mark i=0; shift
    mark=$(wc -l < /tmp/xt/f.out)
    printf '%s\n' "$@" >&7
    while [ $(( $(wc -l < /tmp/xt/f.out) - mark )) -lt "$n" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    tail -n +$((mark + 1)) /tmp/xt/f.out
}
# fifo_close: end of script; the frontend must close and exit 0 within 20 s.
fifo_close() {
    local fp i=0 rc
    exec 7>&-
    fp=$(cat "$PIDS/front.pid")
    while kill -0 "$fp" 2>/dev/null && [ $i -lt 20 ]; do sleep 1; i=$((i + 1)); done
    kill -0 "$fp" 2>/dev/null && fail "frontend did not exit 20 s after the end of its script"
    wait "$fp"; rc=$?; rm -f "$PIDS/front.pid"
    [ $rc = 0 ] || fail "frontend exited with $rc: $(tail -n 3 /tmp/xt/f.out | tr '\n' ' ')"
}

# ------------------------------------------------------------------ failure logs
dump_one() { # SOURCE FILE LINES
    [ -s "$2" ] || return 0
    echo "XT-LOG $XT_N $1 BEGIN ($2, last $3 lines)"
    tail -n "$3" "$2" | tr -d '\r'
    echo "XT-LOG $XT_N $1 END"
}
dump_logs() {
    local f
    dmesg > /tmp/xt/dmesg.txt 2>&1; dump_one dom0-dmesg /tmp/xt/dmesg.txt 40
    xl dmesg > /tmp/xt/xl-dmesg.txt 2>&1; dump_one xen-dmesg /tmp/xt/xl-dmesg.txt 40
    dump_one xenpci-backend /tmp/xt/backend.log 40
    for f in "$CONSOLE_DIR"/guest-*.log; do
        [ -f "$f" ] && [ "$f" -nt /tmp/xt/s$XT_N.log.start ] && dump_one "guest:$(basename "$f" .log)" "$f" 60
    done
    xenstore-ls -f /local/domain/0/backend/pci > /tmp/xt/xs.txt 2>&1; dump_one xenstore-backend-pci /tmp/xt/xs.txt 40
}
cleanup_all() {
    local p d
    for p in "$PIDS"/*.pid; do
        [ -f "$p" ] || continue
        kill -TERM "$(cat "$p")" 2>/dev/null; sleep 1; kill -KILL "$(cat "$p")" 2>/dev/null
        rm -f "$p"
    done
    for d in $(xl list | awk 'NR > 2 { print $2 }'); do xl destroy "$d" > /dev/null 2>&1; done
    loopback_dirs_rm 2> /dev/null
}
