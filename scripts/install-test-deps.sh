#!/usr/bin/env bash
# Installs what the host-side tests need besides scripts/install-deps.sh (idempotent, root):
#  - pytest, pinned in tests/requirements.txt, into the python3 on PATH;
#  - Debian's udev, whose /lib/systemd/systemd-udevd the guest runs (guest-run --udev) to test
#    modalias autoloading: the guest's user space is the host root (Documentation/rig.md).
. "$(dirname "$0")/lib.sh"
PY=${PYTHON:-python3}

if ! "$PY" -c 'import sys, pytest; sys.exit(pytest.__version__ != sys.argv[1])' \
		"$(sed -n 's/^pytest==//p' "$REPO/tests/requirements.txt")" 2>/dev/null; then
	log "pip install -r tests/requirements.txt"
	"$PY" -m pip install --quiet --disable-pip-version-check -r "$REPO/tests/requirements.txt"
fi
if [ ! -x /lib/systemd/systemd-udevd ]; then
	log "apt-get install udev"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends udev >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends udev >/dev/null; }
fi
# The guest bind-mounts its module tree on /lib/modules (the host root is read-only there): it
# must exist.
mkdir -p /lib/modules
log "test deps ready"
