# SPDX-License-Identifier: GPL-2.0
#
# The rmdev framework, for a vendor module's Kbuild. A vendor module is one
# Rust crate whose root declares `#[path = ".../core/rmdev.rs"] pub mod rmdev;`
# (the framework's source, never a copy), plus the framework's C helpers.
# Documentation/vendor-guide.rst explains why. In the vendor's Kbuild:
#
#   rmdev-crate := foo_main.o
#   include $(src)/../core/rmdev.mk
#   obj-$(CONFIG_FOO) += foo.o
#   foo-y := foo_main.o $(rmdev-objs)
#
# This generates the framework's raw bindings in the vendor's directory with
# bindgen, against the kernel being built for, and tells the framework where
# they are (RMDEV_BINDINGS_GENERATED, read by core/bindings.rs) and which
# module it is in (RMDEV_VENDOR, in lock class names).
#
# Supported: loadable modules (every vendor module carries its own copy of
# the framework and of the C helpers, whose global names would clash in a
# built-in kernel) on x86-64 (the architecture bindgen is told to target,
# and the only one the lab builds). Kconfig refuses anything else; this file
# refuses it too, for out-of-tree builds that bypass Kconfig.

rmdev-core := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))

rmdev-bindgen-target-x86 := x86_64-linux-gnu
rmdev-bindgen-target := $(rmdev-bindgen-target-$(SRCARCH))
ifeq ($(rmdev-bindgen-target),)
$(error rmdev: architecture $(SRCARCH) is not supported (x86 only))
endif
ifeq ($(CONFIG_X86_64),)
$(error rmdev: 32-bit x86 is not supported (x86-64 only))
endif
ifeq ($(CONFIG_VFIO_VIRQFD),)
$(error rmdev: the kernel has no CONFIG_VFIO_VIRQFD (vfio's virqfd, which rmdev's Kconfig selects and VFIO_PCI_CORE does too))
endif
rmdev-objs := rmdev_helpers.o
rmdev-bindings := $(obj)/rmdev_bindings_generated.rs

targets += rmdev_bindings_generated.rs
clean-files += rmdev_bindings_generated.rs

CFLAGS_rmdev_helpers.o := -I$(rmdev-core)
$(obj)/rmdev_helpers.o: $(rmdev-core)/helpers.c $(rmdev-core)/helpers.h FORCE
	$(call if_changed_rule,cc_o_c)

quiet_cmd_rmdev_bindgen = BINDGEN $@
      cmd_rmdev_bindgen = \
	$(BINDGEN) $< --rust-target 1.68 --use-core --with-derive-default \
		--ctypes-prefix kernel::ffi --no-layout-tests --no-debug '.*' \
		--enable-function-attribute-detection \
		$(shell grep -Ev '^\#|^$$' $(srctree)/rust/bindgen_parameters) \
		$(shell grep -Ev '^\#|^$$' $(rmdev-core)/bindgen_parameters) \
		-o $@ -- $(c_flags) \
		-w --target=$(rmdev-bindgen-target) -fno-builtin -D__BINDGEN__ -DMODULE \
		-I$(rmdev-core)

$(rmdev-bindings): $(rmdev-core)/bindings_helper.h $(rmdev-core)/helpers.h \
		$(rmdev-core)/bindgen_parameters FORCE
	$(call if_changed_dep,rmdev_bindgen)

$(obj)/$(rmdev-crate): $(rmdev-bindings)
# `modname` is expanded when the crate is built: the module it goes into.
RUSTFLAGS_$(rmdev-crate) += --env-set RMDEV_BINDINGS_GENERATED=$(abspath $(rmdev-bindings)) \
	--env-set RMDEV_VENDOR=$(modname)
