# Common settings for the rig scripts. Source it; do not run it.
# shellcheck shell=bash
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${VMRS_CACHE:-$HOME/.cache/virtio-media-rs}
mkdir -p "$CACHE"

# Pinned versions (see Documentation/rig.md).
KVER=6.12
BINDGEN_VER=0.73.2
VHOST_DEVICE_MEDIA_VER=0.1.1
QEMU_VER=10.0.2

# Toolchain: Debian's rustc-web by absolute path (the rustup proxies have no rust-src).
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc HOSTRUSTC=/usr/bin/rustc
BINDGEN=$CACHE/bindgen-$BINDGEN_VER/bin/bindgen

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Our own vhost-user test device (tests/device, Documentation/test-device.md): the binary lives
# in $CACHE/vmrs-device-<hash>/, <hash> = sha256 (12 hex digits) of the crate's manifest, lock
# file and sources (names + contents), so any edit builds into a new directory. Sets VMRS_DEVICE.
vmrs_device_paths() {
	local dir=$REPO/tests/device f hash
	# Every build input: the Rust sources, build.rs and the C it compiles (csrc/, decoder profile).
	hash=$(cd "$dir" && find Cargo.toml Cargo.lock build.rs src csrc -type f \
		\( -name '*.rs' -o -name 'Cargo.*' -o -name '*.c' -o -name '*.h' \) 2>/dev/null \
		| LC_ALL=C sort | while read -r f; do printf '%s\0' "$f"; cat "$f"; done | sha256sum | cut -c1-12)
	VMRS_DEVICE_DIR=$CACHE/vmrs-device-$hash
	VMRS_DEVICE=$VMRS_DEVICE_DIR/vmrs-device
}

# Kernel build tree location, keyed on version + config fragment hash; set by kernel_paths.
# VMRS_KERNEL_FLAVOR=debug (default: the test kernel, scripts/kernel/guest.config) or
# production (the same options minus the debugging ones, scripts/kernel/production.config
# applied on top; used by bench/ only). KFRAGMENTS lists the fragments in the order applied.
kernel_paths() {
	local src_tar
	src_tar=$(ls /usr/src/linux-source-$KVER.tar.* 2>/dev/null | head -n1) || true
	[ -n "$src_tar" ] || die "linux-source-$KVER not installed (run scripts/install-deps.sh)"
	KFULLVER=$(dpkg-query -W -f='${Version}' linux-source-$KVER)
	KFLAVOR=${VMRS_KERNEL_FLAVOR:-debug}
	KFRAGMENTS=("$REPO/scripts/kernel/guest.config")
	case "$KFLAVOR" in
	debug) KTAG= ;;
	production) KFRAGMENTS+=("$REPO/scripts/kernel/production.config"); KTAG=production- ;;
	*) die "VMRS_KERNEL_FLAVOR: debug or production, not $KFLAVOR" ;;
	esac
	KCONFHASH=$(cat "${KFRAGMENTS[@]}" "$REPO/scripts/build-kernel.sh" | sha256sum | cut -c1-12)
	KSRC=$CACHE/linux-$KFULLVER
	KBUILD=$CACHE/kbuild-$KFULLVER-$KTAG$KCONFHASH
	KMAKE=(make -C "$KSRC" O="$KBUILD" LLVM=1 RUSTC="$RUSTC" RUSTDOC="$RUSTDOC" HOSTRUSTC="$HOSTRUSTC" BINDGEN="$BINDGEN")
}
