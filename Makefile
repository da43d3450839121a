# SPDX-License-Identifier: GPL-2.0
#
# rmdev. The two commands that do everything (each installs what is missing):
#
#   make demo     boot the lab VM and run the end-to-end scenario, then
#                 libvirt's part on two lab VMs (save, restore, migration)
#   make check    every test: host tests, then the in-VM tests in a debug kernel
#
# Other targets:
#   make          build the kernel modules against the lab kernel (or KDIR=...)
#   make bench    the benchmarks in the release kernel: a table of ratios
#                 against references from the same boot (build/bench/)
#   make fsm-table  print the migration FSM's next-step table (oracle format)
#   make install  the rmdev tool, its manual pages (section 8) and shell
#                 completions, under $(DESTDIR)$(PREFIX) (PREFIX=/usr/local)
#   make check-libvirt-pair  only libvirt's live migration between two lab VMs
#   make demo-libvirt  only the libvirt part of the demo
#   make clean
#
# The kernel build itself is driven by Kbuild files; this Makefile only hands
# over to tools/lab, which owns the toolchain and the kernel cache.

LAB := $(CURDIR)/tools/lab
ORACLE := core/logic/tests/data/fsm-oracle.txt
export RMDEV_KDIR := $(KDIR)
# cargo's builds live in the lab's cache (as tools/lab sets it): a fresh
# clone rebuilds only the project's own crates.
export CARGO_TARGET_DIR ?= $(or $(RMDEV_CACHE),$(HOME)/.cache/rmdev)/target

.PHONY: all modules check host-check build-check vm-check check-libvirt-pair lab-selftest demo demo-libvirt bench fsm-table install clean setup

all: modules

modules:
	@$(LAB) modules

setup:
	@$(LAB) setup

# Host tests need no kernel: formatting, lints, the logic's unit/property/fuzz
# tests, make install, and the FSM table against Linux 6.12's oracle.
host-check: setup
	cargo fmt --all --check
	rustfmt --edition 2021 --check samples/sample.rs vendors/igbvf.rs  # and the core/ they mount
	cargo clippy --quiet --all-targets -- -D warnings
	RMDEV_FUZZ_SECONDS=$${RMDEV_FUZZ_SECONDS:-10} cargo test --quiet
	tests/build/install-check
	@$(MAKE) --no-print-directory -s fsm-table | diff -u <(grep '^0x' $(ORACLE)) - \
		&& echo "fsm-table: identical to the Linux 6.12 oracle (256 rows)"

# The supported build configurations: the modules (warnings as errors,
# clippy) against the lab kernel, then Kconfig and the out-of-tree build
# refusing what is not supported.
build-check: setup
	$(LAB) modules
	tests/build/kconfig-check

# The in-VM tests in one run of two lab VMs (tests/vm/two-hosts): host 1
# runs the whole suite, every tests/vm/t-*.sh, then tests/vm/rmdev-host2
# (the rmdev tool's second host: t-rmdev leaves its files in SHARE, and the
# modules are reloaded with other parameters), then the source side of
# libvirt's live migration; host 2, the migration's target, boots first,
# prepares, and is parked (its VM stopped) until host 1 wakes it.
# t-rmdev's JSON from the real devices is checked against the tool's
# schema afterwards.
SHARE := $(CURDIR)/build/two-hosts
vm-check:
	rm -rf $(SHARE)
	RMDEV_SHARE=$(SHARE) RMDEV_VM_TIMEOUT=5400 $(LAB) pair --park-host2 host2-parked wake-host2 -- $(CURDIR)/tests/vm/two-hosts
	RMDEV_JSON_DIR=$(SHARE)/json cargo test --quiet -p rmdev --test json_schema lab_outputs

# Only libvirt's live migration between two lab VMs at once
# (tests/vm/libvirt-pair, also part of make check).
PAIR_SHARE := $(CURDIR)/build/libvirt-pair
check-libvirt-pair: setup
	rm -rf $(PAIR_SHARE)
	RMDEV_SHARE=$(PAIR_SHARE) $(LAB) pair -- $(CURDIR)/tests/vm/libvirt-pair

lab-selftest:
	tests/lab/selftest

check: host-check build-check vm-check lab-selftest

demo: setup
	cargo build --quiet --release -p rmdev-vm-test -p rmdev
	$(LAB) run -- $(CURDIR)/tools/demo
	$(MAKE) --no-print-directory demo-libvirt

# libvirt on two lab VMs at once (tools/demo-libvirt: save, restore and live
# migration with rmdev's hook); the second part of make demo.
DEMO_SHARE := $(CURDIR)/build/demo-libvirt
demo-libvirt: setup
	rm -rf $(DEMO_SHARE)
	RMDEV_SHARE=$(DEMO_SHARE) $(LAB) pair -- $(CURDIR)/tools/demo-libvirt

# Benchmarks: the release kernel (cached like the debug one), one boot for
# every figure and its reference, then the table (exit 1: a goal missed).
BENCH_OUT := $(CURDIR)/build/bench
bench: setup
	cargo build --quiet --release -p rmdev-bench -p rmdev -p rmdev-vm-test
	rm -rf $(BENCH_OUT)
	RMDEV_SHARE=$(BENCH_OUT) $(LAB) --config release run --vfs 2 -- $(CURDIR)/tests/bench/run
	$(CARGO_TARGET_DIR)/release/rmdev-bench report $(BENCH_OUT)/results.jsonl --json $(BENCH_OUT)/report.json

# The operator's tool, as a distribution would lay it out (mdevctl's
# too: the binary in sbin, its pages in section 8). Needs only cargo.
PREFIX ?= /usr/local
RMDEV_BIN := $(CARGO_TARGET_DIR)/release/rmdev
install:
	cargo build --quiet --release -p rmdev
	install -D -m 0755 $(RMDEV_BIN) $(DESTDIR)$(PREFIX)/sbin/rmdev
	install -d $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(RMDEV_BIN) man --dir $(DESTDIR)$(PREFIX)/share/man/man8 >/dev/null
	$(RMDEV_BIN) completions bash >$(DESTDIR)$(PREFIX)/share/bash-completion/completions/rmdev
	$(RMDEV_BIN) completions zsh >$(DESTDIR)$(PREFIX)/share/zsh/site-functions/_rmdev
	$(RMDEV_BIN) completions fish >$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/rmdev.fish

fsm-table:
	@cargo run --quiet --bin fsm-table

clean:
	cargo clean
	rm -rf build
	$(LAB) __clean

SHELL := /bin/bash
