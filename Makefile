# xenpci: NetBSD's xpci(4)/pciback(4) in Swift. `make help` lists the targets.
SWIFT ?= swift
CC ?= cc
BUILD := build
ABI_DIR := tools/abi-check
TEST_DEPS := libxen-dev pciutils

.PHONY: help deps build test abi-check xenlib-check demo clean

help:
	@echo "make demo       run the backend and frontend on the mock hypervisor"
	@echo "make test       install test dependencies (libxen-dev, pciutils), run abi-check and the test suite"
	@echo "make abi-check  compare Headers/ with the system's Xen headers"
	@echo "make xenlib-check  compare our Xen library prototypes with the system's headers"
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

$(BUILD)/xenlib-check: tools/xenlib-check/xenlib_check.c Headers/xenpci_xenlibs.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -Wall -Wextra -Werror -IHeaders tools/xenlib-check/xenlib_check.c -o $@

xenlib-check:
	@test -f /usr/include/xenstore.h || { echo "xenlib-check: /usr/include/xenstore.h missing: run 'make deps' (libxen-dev)" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(BUILD)/xenlib-check
	@$(BUILD)/xenlib-check

test: deps
	@$(MAKE) --no-print-directory abi-check xenlib-check
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

demo:
	$(SWIFT) run -c release xenpci demo

clean:
	rm -rf $(BUILD) .build
