#!/usr/bin/env bash
# Builds the VMM: QEMU $QEMU_VER from Debian's bookworm-backports source (+ds tarball), with the
# project's patches from scripts/qemu/*.patch (applied in name order with patch -p1), for
# x86_64-softmmu only. Installed under a cache directory keyed on the hash of the patches and
# this script; a rerun with a cached build costs seconds. Prints the path of the installed
# qemu-system-x86_64 on stdout (logs go to stderr). See Documentation/qemu.md.
#
# Firmware: the +ds tarball carries no firmware. The binary is configured with
# --firmwarepath=/usr/share/qemu:/usr/share/seabios, i.e. it finds Debian's seabios
# (bios-256k.bin, vgabios-*.bin) and qemu-system-data (kvmvapic.bin, linuxboot_dma.bin, ...)
# by itself; no -L is needed at run time (-L DIR still takes precedence if given).
. "$(dirname "$0")/lib.sh"

QHASH=$(cat "$REPO"/scripts/qemu/*.patch "$REPO/scripts/build-qemu.sh" | sha256sum | cut -c1-12)
QDIR=$CACHE/qemu-$QEMU_VER-$QHASH
QEMU_BIN=$QDIR/bin/qemu-system-x86_64
TARNAME=qemu_$QEMU_VER+ds.orig.tar.xz
TARBALL=$CACHE/$TARNAME
FWPATH=/usr/share/qemu:/usr/share/seabios

if [ -f "$QDIR/.built" ] && [ -x "$QEMU_BIN" ]; then echo "$QEMU_BIN"; exit 0; fi
exec 9>"$CACHE/build.lock"; flock 9   # one heavy build at a time (2 cores)
if [ -f "$QDIR/.built" ] && [ -x "$QEMU_BIN" ]; then echo "$QEMU_BIN"; exit 0; fi

for cmd in meson ninja patch xz; do
	command -v "$cmd" >/dev/null || die "$cmd missing (run scripts/install-deps.sh)"
done
for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin; do
	[ -f "$f" ] || die "$f missing (packages seabios, qemu-system-data; run scripts/install-deps.sh)"
done

# The source package version in bookworm-backports whose upstream part is $QEMU_VER, and the
# sha256 of its orig tarball, from the (signed) Sources index.
read -r DEBVER WANT_SHA < <(apt-cache showsrc qemu | awk -v f="$TARNAME" -v up="$QEMU_VER+ds" '
	/^Package:/ { ver = ""; sec = 0 }
	/^Version:/ { ver = ((index($2, ":" up "-") || index($2, up "-") == 1) && $2 ~ /~bpo12/) ? $2 : "" }
	/^Checksums-Sha256:/ { sec = 1; next }
	/^[^ ]/ { sec = 0 }
	sec && ver != "" && $3 == f { print ver, $1; exit }') || true
[ -n "${WANT_SHA:-}" ] || die "no qemu $QEMU_VER+ds source in bookworm-backports (apt-cache showsrc qemu; run scripts/install-deps.sh)"

if [ ! -f "$TARBALL" ] || [ "$(sha256sum < "$TARBALL" | cut -d' ' -f1)" != "$WANT_SHA" ]; then
	log "downloading qemu $DEBVER source"
	tmp=$(mktemp -d "$CACHE/qemu-dl.XXXXXX")
	# The pool no longer has this version's .dsc and .debian.tar.xz (404), so apt-get exits
	# non-zero after fetching the orig tarball; the checksum below is what counts.
	(cd "$tmp" && apt-get source --download-only -qq "qemu=$DEBVER" >&2 2>"$tmp/apt.err") ||
		log "apt-get source failed as expected for the missing .dsc: $(grep -c '^E:' "$tmp/apt.err") errors"
	[ -f "$tmp/$TARNAME" ] || { cat "$tmp/apt.err" >&2; rm -rf "$tmp"; die "$TARNAME not downloaded"; }
	mv "$tmp/$TARNAME" "$TARBALL.part"
	rm -rf "$tmp"
	got=$(sha256sum < "$TARBALL.part" | cut -d' ' -f1)
	[ "$got" = "$WANT_SHA" ] || { rm -f "$TARBALL.part"; die "$TARNAME: sha256 $got, expected $WANT_SHA"; }
	mv "$TARBALL.part" "$TARBALL"
fi
log "$TARNAME: sha256 $WANT_SHA OK"

start=$(date +%s)
rm -rf "$QDIR"
mkdir -p "$QDIR"
log "extracting into $QDIR/src"
tar -C "$QDIR" -xf "$TARBALL"
mv "$QDIR/qemu-$QEMU_VER" "$QDIR/src"
SRC=$QDIR/src

# The +ds tarball drops the prebuilt EDK2 images (pc-bios/edk2-*.fd.bz2), but meson.build
# unpacks them whenever bzip2 is found and an x86/arm/riscv/loongarch target is built.
# Never unpack them (we boot with SeaBIOS). Done here rather than in scripts/qemu/ because it is
# a property of Debian's repacked tarball, not a change to QEMU.
sed -i 's/^\( *unpack_edk2_blobs = \)bzip2\.found()$/\1false/' "$SRC/meson.build"
grep -q '^ *unpack_edk2_blobs = false$' "$SRC/meson.build" && ! grep -q 'unpack_edk2_blobs = bzip2' "$SRC/meson.build" ||
	die "could not disable the EDK2 blob unpacking in meson.build"

for p in "$REPO"/scripts/qemu/*.patch; do
	log "applying $(basename "$p")"
	patch -d "$SRC" -p1 --forward --quiet < "$p" >&2 || die "$(basename "$p") does not apply"
done

log "configuring"
mkdir -p "$SRC/build"
(cd "$SRC/build" && ../configure \
	--prefix="$QDIR" \
	--firmwarepath="$FWPATH" \
	--python=/usr/bin/python3 \
	--disable-download \
	--target-list=x86_64-softmmu \
	--without-default-features \
	--enable-tcg \
	--enable-vhost-user \
	--enable-virtfs --enable-attr \
	--enable-pixman \
	--disable-slirp \
	--disable-install-blobs \
	--disable-docs \
	--disable-tools) >"$QDIR/configure.log" 2>&1 ||
	{ tail -40 "$QDIR/configure.log" >&2; die "QEMU configure failed (log: $QDIR/configure.log)"; }

log "building QEMU in $SRC/build"
make -C "$SRC/build" -j"$(nproc)" >"$QDIR/build.log" 2>&1 ||
	{ tail -40 "$QDIR/build.log" >&2; die "QEMU build failed (log: $QDIR/build.log)"; }
make -C "$SRC/build" install >>"$QDIR/build.log" 2>&1 ||
	{ tail -40 "$QDIR/build.log" >&2; die "QEMU install failed (log: $QDIR/build.log)"; }

# Sanity: the patched devices are there and the firmware is found without -L.
"$QEMU_BIN" -device help 2>/dev/null | grep -q '"vhost-user-device-pci"' ||
	die "vhost-user-device-pci is not user-creatable in $QEMU_BIN"
"$QEMU_BIN" -device help 2>/dev/null | grep -q '"vhost-user-media-pci"' ||
	die "vhost-user-media-pci is missing in $QEMU_BIN"
"$QEMU_BIN" -machine pc -accel tcg -display none -nic none -S -monitor none -serial none \
	-daemonize -pidfile "$QDIR/smoke.pid" 2>"$QDIR/smoke.err" ||
	{ cat "$QDIR/smoke.err" >&2; die "$QEMU_BIN does not start (firmware?)"; }
kill "$(cat "$QDIR/smoke.pid")" 2>/dev/null || true
rm -f "$QDIR/smoke.pid" "$QDIR/smoke.err"

log "QEMU built in $(( $(date +%s) - start )) s"
echo "$(( $(date +%s) - start ))" > "$QDIR/.built"
echo "$QEMU_BIN"
