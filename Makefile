# xenpci: NetBSD's xpci(4)/pciback(4) in Swift. `make help` lists the targets.
SWIFT ?= swift
CC ?= cc
BUILD := build
ABI_DIR := tools/abi-check
TEST_DEPS := libxen-dev pciutils mandoc

.PHONY: help deps build test abi-check xenlib-check demo man bench fuzz fuzz-replay load sanitize xen-test clean

help:
	@echo "make demo       run the backend and frontend on the mock hypervisor, then a tour of the shell"
	@echo "                (DEMO_ARGS= for the interactive shell; DEMO_ARGS='--script FILE' for yours)"
	@echo "make man        check and render the manual pages into build/man/*.txt"
	@echo "make test       install test dependencies (libxen-dev, pciutils, mandoc), run abi-check and the test suite"
	@echo "make abi-check  compare Headers/CXenPCI/ with the system's Xen headers"
	@echo "make xenlib-check  compare our Xen library prototypes with the system's headers"
	@echo "make build      build everything"
	@echo "make bench      request-path benchmarks vs the C reference (docs/PERFORMANCE.md); BENCH_ARGS=--quick"
	@echo "make xen-test   boot Xen 4.17 + Linux dom0 under QEMU and run the integration scenarios"

deps:
	@tools/deps.sh $(TEST_DEPS)

build:
	$(SWIFT) build

$(BUILD)/abi-check: $(ABI_DIR)/*.c $(ABI_DIR)/*.h $(ABI_DIR)/*.def Headers/CXenPCI/*.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -Wall -Wextra -Wno-type-limits -Werror -IHeaders/CXenPCI -I$(ABI_DIR) \
	    $(ABI_DIR)/abi_xen.c $(ABI_DIR)/abi_ours.c $(ABI_DIR)/abi_main.c -o $@

abi-check:
	@test -f /usr/include/xen/io/pciif.h || { echo "abi-check: /usr/include/xen/io/pciif.h missing: run 'make deps' (libxen-dev)" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(BUILD)/abi-check
	@$(BUILD)/abi-check

$(BUILD)/xenlib-check: tools/xenlib-check/xenlib_check.c Headers/CXenLibs/xenpci_xenlibs.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -Wall -Wextra -Werror -IHeaders/CXenLibs tools/xenlib-check/xenlib_check.c -o $@

xenlib-check:
	@test -f /usr/include/xenstore.h || { echo "xenlib-check: /usr/include/xenstore.h missing: run 'make deps' (libxen-dev)" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(BUILD)/xenlib-check
	@$(BUILD)/xenlib-check

test: deps
	@$(MAKE) --no-print-directory abi-check xenlib-check
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	@$(MAKE) --no-print-directory fuzz-replay

DEMO_ARGS ?= --tour
xen-test:
	@bash tools/xen-test/run.sh

demo:
	$(SWIFT) run -c release xenpci demo $(DEMO_ARGS)

MAN_PAGES := man/xenpci.8 man/xenpci-pciback.4 man/xenpci-xpci.4
# mandoc when present (tools/deps.sh mandoc installs it), else groff -mdoc.
man: $(MAN_PAGES)
	@mkdir -p $(BUILD)/man
	@if command -v mandoc >/dev/null; then \
	    mandoc -Tlint -W warning $(MAN_PAGES) || exit 1; \
	    for p in $(MAN_PAGES); do mandoc -Tutf8 $$p | col -bx > $(BUILD)/man/$$(basename $$p).txt || exit 1; done; \
	elif command -v groff >/dev/null; then \
	    for p in $(MAN_PAGES); do groff -mdoc -Tutf8 -P-c -ww $$p | col -bx > $(BUILD)/man/$$(basename $$p).txt || exit 1; done; \
	else echo "man: neither mandoc nor groff: run 'tools/deps.sh mandoc'" >&2; exit 1; fi
	@echo "man: rendered $(notdir $(MAN_PAGES)) into $(BUILD)/man/"

# issue 9: the C reference (bench/) and the Swift benchmarks, one invocation.
$(BUILD)/xenpci-ref: bench/xenpci_ref.c Headers/CXenPCI/xenpci_abi.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O2 -Wall -Wextra -Werror -pthread -IHeaders/CXenPCI bench/xenpci_ref.c -o $@

bench: $(BUILD)/xenpci-ref
	@# The default scratch path: with --scratch-path, SwiftPM 6.3.1's incremental
	@# release builds fail ("unknown build description").
	$(SWIFT) build -c release --product xenpci-bench
	.build/release/xenpci-bench --reference $(BUILD)/xenpci-ref --json $(BUILD)/bench.json $(BENCH_ARGS)

# The test suite under ThreadSanitizer and AddressSanitizer.
sanitize:
	@tools/sanitize.sh

# issue 8: 64 guests x 4 devices x 100,000 requests with hotplug and restarts.
load:
	$(SWIFT) build -c release --product xenpci-bench
	.build/release/xenpci-bench --load $(LOAD_ARGS)

clean:
	rm -rf $(BUILD) .build

# Fuzzing (libFuzzer + ASan): FUZZ_SECONDS per target (default 60).
fuzz:
	@tools/fuzz/run.sh

# Replays the committed corpora through a normal build (part of `make test`).
fuzz-replay:
	$(SWIFT) build --product xenpci-fuzz
	@for t in request xenstore hidelist frontend guests; do .build/debug/xenpci-fuzz $$t Tests/Fuzz/corpus/$$t || exit 1; done
