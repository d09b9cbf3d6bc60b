#!/usr/bin/env bash
# Host tools from crates.io, installed under $CACHE (not on PATH):
#  - bindgen-cli (the kernel needs >= 0.65.1; Debian ships 0.60)
#  - vhost-device-media (rust-vmm's vhost-user virtio-media device, simple-capture backend)
#  - vmrs-device, our own vhost-user virtio-media test device (tests/device), built with
#    `cargo build --release --locked` into $CACHE/vmrs-device-<hash>/ (see vmrs_device_paths)
# Prints nothing on stdout: logs and cargo output go to stderr.
. "$(dirname "$0")/lib.sh"
VDM=$CACHE/vhost-device-media-$VHOST_DEVICE_MEDIA_VER
vmrs_device_paths
if [ -x "$BINDGEN" ] && [ -x "$VDM/bin/vhost-device-media" ] && [ -x "$VMRS_DEVICE" ]; then
	exit 0
fi
exec 9>"$CACHE/build.lock"; flock 9   # one heavy build at a time (2 cores)

if [ ! -x "$BINDGEN" ]; then
	log "cargo install bindgen-cli $BINDGEN_VER"
	cargo install --quiet --locked bindgen-cli --version "$BINDGEN_VER" --root "$CACHE/bindgen-$BINDGEN_VER"
fi

# v4l2r (used by vhost-device-media and, through the virtio-media crate, by vmrs-device) runs
# bindgen over videodev2.h; bookworm's 6.1 UAPI headers lack the AV1 controls it needs, so point
# it at bookworm-backports' linux-libc-dev. Sets V4L2R_VIDEODEV2_H_PATH.
v4l2r_headers() {
	local hdr=$CACHE/linux-libc-dev-bpo tmp
	if [ ! -f "$hdr/usr/include/linux/videodev2.h" ]; then
		tmp=$(mktemp -d)
		(cd "$tmp" && apt-get download -qq linux-libc-dev/bookworm-backports) >&2
		rm -rf "$hdr"; mkdir -p "$hdr"
		dpkg-deb -x "$tmp"/linux-libc-dev_*.deb "$hdr"
		rm -rf "$tmp"
	fi
	export V4L2R_VIDEODEV2_H_PATH=$hdr/usr/include
}

if [ ! -x "$VDM/bin/vhost-device-media" ]; then
	v4l2r_headers
	log "cargo install vhost-device-media $VHOST_DEVICE_MEDIA_VER"
	cargo install --quiet --locked vhost-device-media --version "$VHOST_DEVICE_MEDIA_VER" \
		--features simple-capture --root "$VDM" >&2
fi

if [ ! -x "$VMRS_DEVICE" ]; then
	v4l2r_headers
	log "cargo build --release --locked tests/device (vmrs-device)"
	t0=$SECONDS
	# One target dir for every version of one checkout: an edit of our sources rebuilds only
	# our crate, and two checkouts (git worktrees) do not rebuild each other's.
	target=$CACHE/vmrs-device-target-$(printf '%s' "$REPO" | sha256sum | cut -c1-8)
	(cd "$REPO/tests/device" && CARGO_TARGET_DIR=$target cargo build --release --locked) >&2
	mkdir -p "$VMRS_DEVICE_DIR"
	cp "$target/release/vmrs-device" "$VMRS_DEVICE.tmp"
	mv "$VMRS_DEVICE.tmp" "$VMRS_DEVICE"
	log "vmrs-device built in $((SECONDS - t0)) s: $VMRS_DEVICE"
fi
log "tools ready"
