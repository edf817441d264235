# xenpci: NetBSD's xpci(4)/pciback(4) in Swift. `make help` lists the targets.
SWIFT ?= swift
CC ?= cc
BUILD := build
ABI_DIR := tools/abi-check
TEST_DEPS := libxen-dev pciutils

.PHONY: help deps build test abi-check demo man clean

help:
	@echo "make demo       run the backend and frontend on the mock hypervisor, then a tour of the shell"
	@echo "                (DEMO_ARGS= for the interactive shell; DEMO_ARGS='--script FILE' for yours)"
	@echo "make man        check and render the manual pages into build/man/*.txt"
	@echo "make test       install test dependencies (libxen-dev, pciutils), run abi-check and the test suite"
	@echo "make abi-check  compare Headers/ with the system's Xen headers"
	@echo "make build      build everything"

deps:
	@tools/deps.sh $(TEST_DEPS)

build:
	$(SWIFT) build

$(BUILD)/abi-check: $(ABI_DIR)/*.c $(ABI_DIR)/*.h $(ABI_DIR)/*.def Headers/*.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -Wall -Wextra -Wno-type-limits -Werror -IHeaders -I$(ABI_DIR) \
	    $(ABI_DIR)/abi_xen.c $(ABI_DIR)/abi_ours.c $(ABI_DIR)/abi_main.c -o $@

abi-check:
	@test -f /usr/include/xen/io/pciif.h || { echo "abi-check: /usr/include/xen/io/pciif.h missing: run 'make deps' (libxen-dev)" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(BUILD)/abi-check
	@$(BUILD)/abi-check

test: deps
	@$(MAKE) --no-print-directory abi-check
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

DEMO_ARGS ?= --tour
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

clean:
	rm -rf $(BUILD) .build
