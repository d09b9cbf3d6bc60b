#!/usr/bin/env bash
# Host tools from crates.io, installed under $CACHE (not on PATH):
#  - bindgen-cli (the kernel needs >= 0.65.1; Debian ships 0.60)
#  - vhost-device-media (rust-vmm's vhost-user virtio-media device, simple-capture backend)
. "$(dirname "$0")/lib.sh"
exec 9>"$CACHE/build.lock"; flock 9   # one heavy build at a time (2 cores)

if [ ! -x "$BINDGEN" ]; then
	log "cargo install bindgen-cli $BINDGEN_VER"
	cargo install --quiet --locked bindgen-cli --version "$BINDGEN_VER" --root "$CACHE/bindgen-$BINDGEN_VER"
fi

VDM=$CACHE/vhost-device-media-$VHOST_DEVICE_MEDIA_VER
if [ ! -x "$VDM/bin/vhost-device-media" ]; then
	# v4l2r runs bindgen over videodev2.h; bookworm's 6.1 UAPI headers lack the AV1
	# controls it needs, so point it at bookworm-backports' linux-libc-dev.
	hdr=$CACHE/linux-libc-dev-bpo
	if [ ! -f "$hdr/usr/include/linux/videodev2.h" ]; then
		tmp=$(mktemp -d)
		(cd "$tmp" && apt-get download -qq linux-libc-dev/bookworm-backports)
		rm -rf "$hdr"; mkdir -p "$hdr"
		dpkg-deb -x "$tmp"/linux-libc-dev_*.deb "$hdr"
		rm -rf "$tmp"
	fi
	log "cargo install vhost-device-media $VHOST_DEVICE_MEDIA_VER"
	V4L2R_VIDEODEV2_H_PATH=$hdr/usr/include \
		cargo install --quiet --locked vhost-device-media --version "$VHOST_DEVICE_MEDIA_VER" \
		--features simple-capture --root "$VDM"
fi
log "tools ready"
