# SPDX-License-Identifier: GPL-2.0
#
# Out-of-tree build of virtio_media.ko:
#   make KDIR=<kernel build dir>          (or: make -C $KDIR M=$PWD)
# KDIR defaults to the rig's cached guest kernel (scripts/build-kernel.sh prints it). The kernel
# must have been built with LLVM=1 and CONFIG_RUST=y; the same RUSTC/BINDGEN are passed here.

KDIR ?= $(shell scripts/build-kernel.sh)
VMRS_CACHE ?= $(HOME)/.cache/virtio-media-rs
BINDGEN ?= $(VMRS_CACHE)/bindgen-0.73.2/bin/bindgen
KMAKE = $(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
	HOSTRUSTC=/usr/bin/rustc BINDGEN=$(BINDGEN) CLIPPY_DRIVER=/usr/bin/clippy-driver \
	RUSTFMT=/usr/bin/rustfmt

all: modules

modules:
	$(KMAKE) modules

# The kernel's clippy run over the driver (CLIPPY=1 rebuilds every Rust object).
clippy:
	$(KMAKE) CLIPPY=1 modules

# rustfmt with the kernel's own configuration (.rustfmt.toml of the kernel tree).
RUST_SRCS = virtio_media.rs ffi.rs protocol.rs session.rs
KSRC = $(shell readlink -f $(KDIR)/source)
rustfmt:
	/usr/bin/rustfmt --edition 2021 --config-path $(KSRC)/.rustfmt.toml $(RUST_SRCS)

rustfmtcheck:
	/usr/bin/rustfmt --edition 2021 --config-path $(KSRC)/.rustfmt.toml --check $(RUST_SRCS)

clean:
	$(KMAKE) clean

.PHONY: all modules clippy rustfmt rustfmtcheck clean
