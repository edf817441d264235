#!/usr/bin/env bash
# make fuzz: build the libFuzzer harness optimised, with ASan + libFuzzer over
# every module, and run each target for FUZZ_SECONDS from the committed
# corpus. Prints each target's executions per second against its target
# (issue 13: request >= 10,000; xenstore, frontend >= 1,000); a missed rate
# is printed as missed, it does not fail the run.
# New inputs stay in build/fuzz/corpus unless FUZZ_KEEP=1 merges them back.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"request xenstore hidelist frontend guests"}
declare -A RATE_TARGET=([request]=10000 [xenstore]=1000 [frontend]=1000)
scratch=.build-fuzz
echo "fuzz: building the harness with -sanitize=fuzzer,address (first build takes a few minutes)" >&2
# SwiftPM 6.3 fails incremental builds in a custom scratch path with
# "unknown build description" unless its build description is dropped.
rm -f $scratch/release.yaml $scratch/x86_64-unknown-linux-gnu/release/description.json
swift build -c release --product xenpci-fuzz --scratch-path $scratch \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DXENPCI_LIBFUZZER \
    -Xcc -fsanitize=fuzzer-no-link,address >&2
bin=$scratch/release/xenpci-fuzz
export LSAN_OPTIONS=suppressions=$PWD/tools/fuzz/lsan.supp
# Shallow allocation stacks: unwinding at every malloc was a fifth of the
# xenstore target's time; reports still name the allocating frames.
export ASAN_OPTIONS=${ASAN_OPTIONS:-malloc_context_size=4}
mkdir -p build/fuzz
status=0
printf '%-10s %10s %8s %8s %8s  %-22s %s\n' target executions seconds exec/s corpus rate result
for t in $targets; do
    work=build/fuzz/corpus/$t
    mkdir -p "$work"
    cp -n Tests/Fuzz/corpus/$t/* "$work"/ 2>/dev/null || true
    echo "fuzz: $t for ${secs}s" >&2
    log=build/fuzz/$t.log
    set +e
    XENPCI_FUZZ_TARGET=$t timeout $((secs + 120)) "$bin" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 \
        -artifact_prefix=build/fuzz/$t- "$work" >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+' || echo 0)
    if [ "$rc" = 0 ]; then result=ok; else result="CRASH (rc $rc): see $log and build/fuzz/$t-*"; status=1; fi
    rate=$(( runs / (secs > 0 ? secs : 1) ))
    want=${RATE_TARGET[$t]:-}
    if [ -z "$want" ]; then verdict="(no target)"; elif [ "$rate" -ge "$want" ]; then verdict=">= $want: met"; else verdict=">= $want: missed"; fi
    printf '%-10s %10s %8s %8s %8s  %-22s %s\n' "$t" "$runs" "$secs" "$rate" "$(ls "$work" | wc -l)" "$verdict" "$result"
    if [ "$rc" != 0 ]; then grep -E "Fatal error|ERROR:|SUMMARY" "$log" | head -3 >&2; fi
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        XENPCI_FUZZ_TARGET=$t "$bin" -merge=1 Tests/Fuzz/corpus/$t "$work" >/dev/null 2>&1 || true
    fi
done
exit $status
