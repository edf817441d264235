#!/usr/bin/env bash
# make sanitize: the test suite under ThreadSanitizer, then AddressSanitizer,
# each in its own scratch path.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for s in ${SANITIZERS:-thread address}; do
    scratch=.build-$s
    # SwiftPM 6.3 fails incremental builds in a custom scratch path with
    # "unknown build description" unless its build description is dropped.
    rm -f $scratch/debug.yaml $scratch/x86_64-unknown-linux-gnu/debug/description.json
    echo "sanitize: building the tests with --sanitize=$s" >&2
    swift build --build-tests --sanitize=$s --scratch-path $scratch >&2
    echo "sanitize: running the tests under $s" >&2
    log=build/sanitize-$s.log
    mkdir -p build
    set +e
    # `swift test --skip-build` in a custom scratch path hits the same bug:
    # run the test bundle directly.
    XENPCI_SANITIZER=$s TSAN_OPTIONS="halt_on_error=0 ${TSAN_OPTIONS:-}" ASAN_OPTIONS="detect_leaks=0 ${ASAN_OPTIONS:-}" \
        $scratch/debug/xenpciPackageTests.xctest --testing-library swift-testing >"$log" 2>&1
    rc=$?
    set -e
    reports=$(grep -c -E "^(WARNING: ThreadSanitizer|==[0-9]+==ERROR: AddressSanitizer)" "$log" || true)
    summary=$(grep -E "Test run with" "$log" | tail -1)
    echo "sanitize: $s: ${summary:-no summary} ; $reports sanitizer report(s); log $log"
    if [ "$rc" != 0 ] || [ "$reports" != 0 ]; then status=1; fi
done
exit $status
