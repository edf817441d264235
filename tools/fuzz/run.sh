#!/usr/bin/env bash
# make fuzz: build the libFuzzer harness (ASan + libFuzzer over every module)
# and run each target for FUZZ_SECONDS, starting from the committed corpus.
# New inputs stay in build/fuzz/corpus unless FUZZ_KEEP=1 merges them back.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"request xenstore hidelist frontend"}
scratch=.build-fuzz
echo "fuzz: building the harness with -sanitize=fuzzer,address (first build takes a few minutes)" >&2
# SwiftPM 6.3 fails incremental builds in a custom scratch path with
# "unknown build description" unless its build description is dropped.
rm -f $scratch/debug.yaml $scratch/x86_64-unknown-linux-gnu/debug/description.json
swift build --product xenpci-fuzz --scratch-path $scratch \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DXENPCI_LIBFUZZER \
    -Xcc -fsanitize=fuzzer-no-link,address >&2
bin=$scratch/debug/xenpci-fuzz
export LSAN_OPTIONS=suppressions=$PWD/tools/fuzz/lsan.supp
mkdir -p build/fuzz
status=0
printf '%-10s %10s %8s %8s  %s\n' target executions seconds corpus result
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
    printf '%-10s %10s %8s %8s  %s\n' "$t" "$runs" "$secs" "$(ls "$work" | wc -l)" "$result"
    if [ "$rc" != 0 ]; then grep -E "Fatal error|ERROR:|SUMMARY" "$log" | head -3 >&2; fi
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        XENPCI_FUZZ_TARGET=$t "$bin" -merge=1 Tests/Fuzz/corpus/$t "$work" >/dev/null 2>&1 || true
    fi
done
exit $status
