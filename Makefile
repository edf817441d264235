# xenpci: NetBSD's xpci(4)/pciback(4) in Swift. `make help` lists the targets.
SWIFT ?= swift
CC ?= cc
BUILD := build
ABI_DIR := tools/abi-check
TEST_DEPS := libxen-dev pciutils

.PHONY: help deps build test abi-check demo clean xen-test

help:
	@echo "make demo       run the backend and frontend on the mock hypervisor"
	@echo "make test       install test dependencies (libxen-dev, pciutils), run abi-check and the test suite"
	@echo "make abi-check  compare Headers/ with the system's Xen headers"
	@echo "make build      build everything"
	@echo "make xen-test   boot Xen 4.17 + Linux dom0 under QEMU and run the integration scenarios"

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

xen-test:
	@bash tools/xen-test/run.sh

demo:
	$(SWIFT) run -c release xenpci demo

clean:
	rm -rf $(BUILD) .build
