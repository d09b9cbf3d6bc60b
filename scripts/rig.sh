#!/usr/bin/env bash
# Everything the guest needs, built or installed (idempotent, cached under $CACHE):
# Debian packages, host tools (bindgen-cli, vhost-device-media), the guest kernel, QEMU.
. "$(dirname "$0")/lib.sh"
"$REPO/scripts/install-deps.sh"
"$REPO/scripts/install-test-deps.sh"
"$REPO/scripts/build-compliance.sh" >/dev/null
"$REPO/scripts/build-tools.sh"
"$REPO/scripts/build-kernel.sh" >/dev/null
"$REPO/scripts/build-qemu.sh" >/dev/null
