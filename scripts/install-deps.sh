#!/usr/bin/env bash
# Installs every Debian package the rig needs (idempotent). Run as root.
. "$(dirname "$0")/lib.sh"

stamp=$CACHE/deps.stamp
want=$(sha256sum "$0" | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	exit 0
fi

# bookworm-backports: QEMU 10.0 source, meson 1.7, newer UAPI headers for v4l2r.
if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
	cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
log "apt-get update"
apt-get update -qq
export DEBIAN_FRONTEND=noninteractive
log "apt-get install"
apt-get install -y -qq --no-install-recommends \
	build-essential flex bison bc libelf-dev libssl-dev cpio kmod xz-utils zstd \
	clang llvm lld libclang-dev \
	rustc-web rust-web-src libstd-rust-web-dev rust-web-clippy rustfmt-web \
	linux-source-$KVER \
	ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev pkg-config patch python3-venv \
	seabios qemu-system-data dpkg-dev \
	busybox-static v4l-utils libv4l-0 ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-good \
	gstreamer1.0-plugins-base python3 socat >/dev/null
# H.264 decoder profile (issue 5): libavcodec for the test device's decoder (vmrs:decoder);
# h264parse (gstreamer1.0-plugins-bad) for GStreamer's v4l2h264dec pipelines in the tests;
# ffmpeg (above) brings libx264 and ffprobe for the test clips (tests/clips.py).
apt-get install -y -qq --no-install-recommends \
	libavcodec-dev libavutil-dev gstreamer1.0-plugins-bad >/dev/null
apt-get install -y -qq --no-install-recommends -t bookworm-backports meson python3-pycotap >/dev/null
echo "$want" > "$stamp"
log "deps installed"
