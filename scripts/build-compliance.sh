#!/usr/bin/env bash
# v4l2-compliance from v4l-utils $V4L_UTILS_VER (Debian sid) in a private prefix under $CACHE,
# beside bookworm's 1.22.1, for the tests that run both versions (issue 9). Idempotent; prints
# the wrapper's path on stdout, logs on stderr. Tests: tests/compliance.py, wrapper_path().
#
# Nothing is installed on the system and the system's apt state is not touched: apt runs with
# its own configuration (APT_CONFIG: no /etc/apt/apt.conf.d, so no update hooks and no extra
# index targets), its own sources list (sid, signed by debian-archive-keyring), lists and cache
# directories under $CACHE/apt-sid (removed when done). `apt-get download` fetches the packages
# below (v4l-utils, its libraries and the C/C++ runtime they need: sid's binaries need a newer
# glibc than bookworm's), `dpkg -x` unpacks each into the prefix, and the wrapper
# $PREFIX/v4l2-compliance starts v4l2-compliance with the prefix's own dynamic loader and
# library path. $PREFIX/versions lists the packages' versions. Not under /tmp: the guest mounts
# a tmpfs there; it sees $CACHE through its 9p root.
#
# Keyed on the upstream version and this script: $CACHE/v4l-utils-<ver>-<hash>/. Debian sid
# only serves its current build: if sid has moved on from $V4L_UTILS_VER this fails cold and
# says so (bump the pin, and the compliance totals that depend on it).
. "$(dirname "$0")/lib.sh"
V4L_UTILS_VER=${VMRS_V4L_UTILS_VER:-1.32.0}
# libjpeg62-turbo (libv4lconvert's) too, so that nothing is loaded from the host's /lib.
PKGS=(v4l-utils libv4l-0t64 libv4l2rds0t64 libv4lconvert0t64 libc6 libstdc++6 libgcc-s1
	libjson-c5 libudev1 libcap2 libjpeg62-turbo)
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=${VMRS_SID_MIRROR:-http://deb.debian.org/debian}

PREFIX=$CACHE/v4l-utils-$V4L_UTILS_VER-$(sha256sum "$REPO/scripts/build-compliance.sh" | cut -c1-12)
WRAPPER=$PREFIX/v4l2-compliance
if [ -x "$WRAPPER" ] && [ -f "$PREFIX/versions" ]; then
	echo "$WRAPPER"
	exit 0
fi
exec 9>"$CACHE/compliance.lock"; flock 9   # two rig runs at once: one builds, the other waits
if [ -x "$WRAPPER" ] && [ -f "$PREFIX/versions" ]; then
	echo "$WRAPPER"
	exit 0
fi
t0=$SECONDS
[ -r "$KEYRING" ] || die "$KEYRING missing (Debian's debian-archive-keyring)"

# Private apt state: configuration, sources, lists, cache.
D=$CACHE/apt-sid
mkdir -p "$D/etc/apt.conf.d" "$D/etc/preferences.d" "$D/etc/trusted.gpg.d" "$D/lists/partial" \
	"$D/cache/archives/partial"
echo "deb [arch=amd64 signed-by=$KEYRING] $MIRROR sid main" >"$D/etc/sources.list"
cat >"$D/etc/apt.conf" <<EOF
// build-compliance.sh: apt for Debian sid downloads only, none of the system's apt state.
Dir::Etc "$D/etc/";
Dir::Etc::main "apt.conf";
Dir::Etc::parts "apt.conf.d";
Dir::Etc::sourcelist "sources.list";
Dir::Etc::sourceparts "-";
Dir::Etc::preferences "preferences";
Dir::Etc::preferencesparts "preferences.d";
Dir::Etc::trusted "trusted.gpg";
Dir::Etc::trustedparts "trusted.gpg.d";
Dir::State::Lists "$D/lists/";
Dir::Cache "$D/cache/";
Dir::Log "$D/log/";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
Acquire::PDiffs "false";
EOF
# The machine's network settings for apt (proxies; a snapshot mirror's expired Release files
# accepted) carry over: the same mirror, the same rules.
net='Acquire::(https?::Proxy|ftp::Proxy|Check-Valid-Until|Check-Date|Retries|ForceIPv[46])'
apt-config dump | grep -E "^$net( |::)" >>"$D/etc/apt.conf" || true
: >"$D/etc/apt.conf.d/.keep"
export APT_CONFIG=$D/etc/apt.conf
APT_OPTS=(-o "Dir::Etc::sourcelist=$D/etc/sources.list" -o Dir::Etc::sourceparts=-
	-o "Dir::State::Lists=$D/lists" -o "Dir::Cache=$D/cache")

log "apt-get update (Debian sid, private lists in $D)"
apt-get "${APT_OPTS[@]}" -q update >&2 || die "apt-get update of sid failed"
cand=$(apt-cache "${APT_OPTS[@]}" policy v4l-utils | sed -n 's/^ *Candidate: //p')
case $cand in
"$V4L_UTILS_VER"-*) ;;
*) die "Debian sid has v4l-utils '$cand', this rig pins $V4L_UTILS_VER (VMRS_V4L_UTILS_VER)" ;;
esac

tmp=$(mktemp -d "$CACHE/v4l-utils-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "apt-get download ${PKGS[*]}"
(cd "$tmp" && mkdir debs && cd debs && apt-get "${APT_OPTS[@]}" -q download "${PKGS[@]}") >&2 ||
	die "apt-get download from sid failed"
mkdir "$tmp/prefix"
for deb in "$tmp"/debs/*.deb; do
	dpkg -x "$deb" "$tmp/prefix"
	dpkg-deb --show --showformat='${Package} ${Version} ${Architecture}\n' "$deb"
done | LC_ALL=C sort >"$tmp/versions"
for p in "${PKGS[@]}"; do
	grep -q "^$p " "$tmp/versions" || die "$p was not downloaded"
done

# Check it before it goes in place: every library it loads comes from the prefix, and it
# reports the pinned version.
T=$tmp/prefix
run() {
	"$T/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
		--library-path "$T/usr/lib/x86_64-linux-gnu:$T/lib/x86_64-linux-gnu" "$@"
}
libs=$(run --list "$T/usr/bin/v4l2-compliance") || die "v4l2-compliance does not link: $libs"
if outside=$(printf '%s\n' "$libs" | grep '=>' | grep -v "=> $T/"); then
	die "libraries from outside the prefix: $outside"
fi
ver=$(run "$T/usr/bin/v4l2-compliance" --version 2>&1) || true
case $ver in
*"v4l2-compliance $V4L_UTILS_VER,"*) ;;
*) die "sid's v4l2-compliance says '$ver', not v4l2-compliance $V4L_UTILS_VER" ;;
esac

# The wrapper, with the final prefix's absolute path (the guest sees the same path over 9p).
cat >"$T/v4l2-compliance" <<EOF
#!/bin/sh
# v4l2-compliance $V4L_UTILS_VER from Debian sid (scripts/build-compliance.sh), with its own libc.
P=$PREFIX
exec "\$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \\
	--library-path "\$P/usr/lib/x86_64-linux-gnu:\$P/lib/x86_64-linux-gnu" \\
	"\$P/usr/bin/v4l2-compliance" "\$@"
EOF
chmod 755 "$T/v4l2-compliance"
mv "$tmp/versions" "$T/versions"   # last: the wrapper + versions mean "done"

rm -rf "$PREFIX"
mv "$T" "$PREFIX"
ver=$("$WRAPPER" --version 2>&1) || { rm -rf "$PREFIX"; die "$WRAPPER --version: $ver"; }
rm -rf "$D"   # 160 MB of sid's lists and apt caches; a cold run fetches them again in seconds
log "$(printf '%s' "$ver" | head -n1) in $((SECONDS - t0)) s: $WRAPPER (versions: $PREFIX/versions)"
echo "$WRAPPER"
