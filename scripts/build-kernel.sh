#!/usr/bin/env bash
# Builds the guest kernel (Debian's linux-source-6.12 + CONFIG_RUST=y) into a cache directory
# keyed on the package version and the hash of the config fragments and this script
# (VMRS_KERNEL_FLAVOR=production: the benchmark kernel, see scripts/lib.sh).
# A rerun with a cached tree costs seconds. Prints the build directory on stdout.
. "$(dirname "$0")/lib.sh"
kernel_paths
[ -x "$BINDGEN" ] || "$REPO/scripts/build-tools.sh"

if [ -f "$KBUILD/.built" ]; then echo "$KBUILD"; exit 0; fi
exec 9>"$CACHE/build.lock"; flock 9
if [ -f "$KBUILD/.built" ]; then echo "$KBUILD"; exit 0; fi

if [ ! -f "$KSRC/Makefile" ]; then
	log "extracting linux-source-$KVER ($KFULLVER)"
	rm -rf "$KSRC" "$CACHE/linux-source-$KVER"
	tar -C "$CACHE" -xf /usr/src/linux-source-$KVER.tar.xz
	mv "$CACHE/linux-source-$KVER" "$KSRC"
fi
mkdir -p "$KBUILD"
start=$(date +%s)
"${KMAKE[@]}" rustavailable >&2
"${KMAKE[@]}" tinyconfig >/dev/null
"$KSRC/scripts/kconfig/merge_config.sh" -m -O "$KBUILD" "$KBUILD/.config" \
	"${KFRAGMENTS[@]}" >/dev/null
"${KMAKE[@]}" olddefconfig >/dev/null
# Every option the fragments ask for (the last fragment naming it wins) must have survived
# olddefconfig.
bad=0
while IFS= read -r line; do
	case "$line" in CONFIG_*=*) ;; *) continue ;; esac
	opt=${line%%=*}; val=${line#*=}
	if [ "$val" = n ]; then
		grep -q "^$opt=" "$KBUILD/.config" && { log "config: $opt should be unset"; bad=1; }
	else
		grep -qx "$line" "$KBUILD/.config" || { log "config: wanted $line, got $(grep "^$opt=" "$KBUILD/.config" || echo unset)"; bad=1; }
	fi
done < <(cat "${KFRAGMENTS[@]}" | awk -F= '/^CONFIG_/ { v[$1] = $0; o[++n] = $1 }
	END { for (i = 1; i <= n; i++) if (!seen[o[i]]++) print v[o[i]] }')
[ $bad = 0 ] || die "config fragment did not apply"
log "building $KFLAVOR kernel in $KBUILD"
"${KMAKE[@]}" -j"$(nproc)" bzImage modules >"$KBUILD/build.log" 2>&1 || { tail -40 "$KBUILD/build.log" >&2; die "kernel build failed"; }
log "kernel built in $(( $(date +%s) - start )) s"
echo "$(( $(date +%s) - start ))" > "$KBUILD/.built"
echo "$KBUILD"
