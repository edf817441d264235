# xenpci: NetBSD's xpci(4)/pciback(4) in Swift. `make help` lists the targets.
SWIFT ?= swift
CC ?= cc
BUILD := build
ABI_DIR := tools/abi-check
TEST_DEPS := libxen-dev pciutils mandoc lintian dpkg-dev

# make install: PREFIX and DESTDIR as usual; systemd also reads units from
# /usr/local/lib/systemd/system (systemd.unit(5)), Debian's own from /lib.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
# The release, from the one place the command takes it from.
VERSION := $(shell sed -n 's/^let xenpciVersion = "\(.*\)"/\1/p' Sources/xenpci/Version.swift)
DEB_ARCH = $(shell dpkg --print-architecture)
DEB_MAINTAINER ?= $(shell git log -1 --format='%an <%ae>' 2>/dev/null)
DEB := $(BUILD)/xenpci_$(VERSION)_$(DEB_ARCH).deb

.PHONY: help deps build test abi-check xenlib-check demo man bench fuzz fuzz-replay load sanitize xen-test clean release install deb deb-lint

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
	@echo "make install    the command, its three manual pages, the systemd unit, bash/zsh/fish completions (PREFIX=/usr/local, DESTDIR=)"
	@echo "make deb        a Debian package of the same files ($(DEB)), checked by lintian"

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
	@$(MAKE) --no-print-directory deb-lint

# The installed command runs without a Swift toolchain: its runtime is linked
# in; relocations are resolved at start and then read-only (full RELRO).
release:
	$(SWIFT) build -c release --static-swift-stdlib -Xlinker -z -Xlinker now -Xlinker -z -Xlinker relro --product xenpci

install: release
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man4 $(DESTDIR)$(UNITDIR) \
	    $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	install -m 755 .build/release/xenpci $(DESTDIR)$(BINDIR)/xenpci
	install -m 644 man/xenpci.8 $(DESTDIR)$(MANDIR)/man8/xenpci.8
	install -m 644 man/xenpci-pciback.4 man/xenpci-xpci.4 $(DESTDIR)$(MANDIR)/man4/
	@# The unit names the binary where this install puts it.
	sed 's|/usr/local/bin/xenpci|$(BINDIR)/xenpci|g' tools/xenpci-backend.service > $(DESTDIR)$(UNITDIR)/xenpci-backend.service
	chmod 644 $(DESTDIR)$(UNITDIR)/xenpci-backend.service
	@# bash-completion sources the file: no #! line.
	.build/release/xenpci --generate-completion-script bash | sed '1{/^#!/d}' > $(DESTDIR)$(BASHCOMPDIR)/xenpci
	.build/release/xenpci --generate-completion-script zsh > $(DESTDIR)$(ZSHCOMPDIR)/_xenpci
	.build/release/xenpci --generate-completion-script fish > $(DESTDIR)$(FISHCOMPDIR)/xenpci.fish
	@echo "install: $(DESTDIR)$(BINDIR)/xenpci, 3 manual pages, $(DESTDIR)$(UNITDIR)/xenpci-backend.service, bash/zsh/fish completions"
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

deb: release
	@command -v dpkg-shlibdeps >/dev/null || { echo "deb: dpkg-shlibdeps missing: run 'tools/deps.sh dpkg-dev'" >&2; exit 1; }
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb
	@$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(BUILD)/deb/root PREFIX=/usr >/dev/null
	tools/debian/mkdeb.sh $(BUILD)/deb/root $(VERSION) $(DEB_ARCH) "$(DEB_MAINTAINER)" $(DEB)

# lintian must find no error in the package (warnings are shown).
deb-lint: deb
	@if command -v lintian >/dev/null; then \
	    lintian --fail-on error --tag-display-limit 0 $(DEB) && echo "deb-lint: lintian found no error in $(DEB)"; \
	else echo "deb-lint: skipped: lintian is not installed (tools/deps.sh lintian installs it)"; fi

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
