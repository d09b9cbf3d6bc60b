"""Boot the test guest and run one command in it (see Documentation/rig.md, "Guest runner").

Used by the pytest harness (tests/conftest.py, tests/test_*.py) and, through scripts/guest-run,
by humans. Standard library only, so scripts/guest-run works without a virtualenv.

    res = run_guest("v4l2-ctl --all", backend="simple-capture", module=True, timeout=300)
    res.stdout, res.stderr, res.status, res.dmesg, res.splats, res.run_dir

One run: a run directory; `vhost-device-media --socket-path RUN/vdm.sock --backend B` started
first (unless backend="none"; backend="vmrs:PROFILE" starts our own test device instead,
`vmrs-device --socket-path RUN/vdm.sock --profile PROFILE`, Documentation/test-device.md) and its
socket awaited; QEMU (TCG) booting the guest kernel with the
host root shared read-only over 9p as the guest's root and scripts/guest-init.sh as PID 1; RUN/share
shared read-write for the command, its results and the guest dmesg. QEMU and the backend are
killed at the end whatever happens (timeout, exception, Ctrl-C, and via PR_SET_PDEATHSIG if this
process dies). The guest dmesg is checked for kernel splats (SPLAT_PATTERNS).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
GUEST_INIT = SCRIPTS / "guest-init.sh"
MODULE_NAME = "virtio_media"

# PCI slot of the first virtio-media device (several devices: slots DEVICE_SLOT0 + i, at most
# MAX_DEVICES: slot 31 is the bus's last; the 9p devices take the first free ones, 2 and 3).
DEVICE_SLOT0 = 0x08
MAX_DEVICES = 32 - DEVICE_SLOT0

# Exit codes of scripts/guest-run besides the guest command's own status (0..255).
EXIT_SPLAT = 125       # the guest dmesg has a kernel splat (SPLAT_PATTERNS)
EXIT_CMD_TIMEOUT = 124  # the command hit --timeout inside the guest (coreutils timeout's code)
EXIT_NO_REPORT = 123    # the guest never reported back (hang, panic, QEMU died, host deadline)
EXIT_SETUP = 122        # the rig failed: build, backend, QEMU start, module load in the guest

# Kernel splats: any dmesg line matching one of these fails the run. Case-sensitive.
SPLAT_PATTERNS = [
    r"WARNING:",
    r"BUG:",
    r"kernel BUG at",
    r"KASAN",
    r"UBSAN",
    r"possible circular locking",
    r"possible recursive locking",
    r"inconsistent lock state",
    r"lockdep",
    r"suspicious RCU usage",
    r"DEBUG_LOCKS_WARN_ON",
    r"refcount_t:",
    r"Oops",
    r"general protection",
    r"Call Trace",
    r"sleeping function called from invalid context",
    r"ODEBUG:",
    r"list_(add|del) corruption",
    r"Kernel panic",
    r"blocked for more than",
    r"rcu: INFO: .*stall",
    r"kmemleak: \d+ new suspected memory leaks",
]
# Lines that match a splat pattern but are not splats (boot banners of the debug options).
SPLAT_BENIGN = [
    r"RCU lockdep checking is enabled",
]

# The QEMU front end of each virtio-media device: "media" = vhost-user-media-pci, the model of
# QEMU's own virtio-media device (scripts/qemu/0003-*.patch, Documentation/qemu.md); "generic" =
# vhost-user-device-pci with virtio-id=48 (the rig's first front end).
QEMU_DEVICE = os.environ.get("VMRS_QEMU_DEVICE", "media")
# backend="generic:B": backend B behind the generic front end whatever QEMU_DEVICE says (a
# backend without shared memory region 0, which vhost-user-media-pci refuses at realize).
GENERIC_PREFIX = "generic:"
BOOT_TIMEOUT = int(os.environ.get("VMRS_BOOT_TIMEOUT", "240"))  # s, boot + setup + teardown
RUNS_ROOT = Path(os.environ.get("VMRS_RUNS", "/tmp/vmrs-runs"))
KEEP_RUNS = 20


class RigError(Exception):
    """The rig itself failed (build, backend, QEMU, guest setup)."""
    exit_code = EXIT_SETUP


class GuestNoReport(AssertionError):
    """The guest never reported back: hang, panic, QEMU died, or the host deadline passed."""
    exit_code = EXIT_NO_REPORT


class SplatError(AssertionError):
    """The guest kernel log has a splat; .result is the GuestResult."""
    exit_code = EXIT_SPLAT
    result: "GuestResult"


def log(msg: str) -> None:
    print(f"guest-run: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Building


@dataclasses.dataclass
class Artifacts:
    kbuild: Path
    bzimage: Path
    krelease: str
    qemu: Path
    vdm: Path
    module: Optional[Path]  # None when built without the module


_built: dict = {}


def _script_stdout(args: Sequence[str]) -> str:
    """Runs a build script; its logs go to our stderr, its last stdout line is the answer."""
    p = subprocess.run(list(args), stdout=subprocess.PIPE, text=True, cwd=REPO)
    if p.returncode != 0:
        raise RigError(f"{' '.join(map(str, args))} failed (exit {p.returncode})")
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if not lines:
        raise RigError(f"{args[0]} printed nothing")
    return lines[-1].strip()


def _lib_vars() -> dict:
    out = subprocess.run(
        ["bash", "-c", f'. "{SCRIPTS}/lib.sh" && vmrs_device_paths && '
                       f'printf "%s\\n" "$CACHE" "$VHOST_DEVICE_MEDIA_VER" "$VMRS_DEVICE"'],
        stdout=subprocess.PIPE, text=True, check=True).stdout.split("\n")
    return {"CACHE": Path(out[0]), "VDM_VER": out[1], "VMRS_DEVICE": Path(out[2])}


VMRS_PREFIX = "vmrs:"  # backend="vmrs:PROFILE[:fault=NAME]": our own test device (tests/device)


def ensure_vmrs_device() -> Path:
    """Our test device's binary, built by scripts/build-tools.sh if tests/device changed."""
    if "vmrs" in _built:
        return _built["vmrs"]
    path = _lib_vars()["VMRS_DEVICE"]
    if not os.access(path, os.X_OK):
        subprocess.run([str(SCRIPTS / "build-tools.sh")], check=True, cwd=REPO,
                       stdout=sys.stderr)
        if not os.access(path, os.X_OK):
            raise RigError(f"{path} missing after scripts/build-tools.sh ran")
    _built["vmrs"] = path
    return path


def backend_command(backend: str, sock: Path, art: "Artifacts") -> list:
    """The command line of the vhost-user backend process for `backend`."""
    backend = backend.removeprefix(GENERIC_PREFIX)
    if backend.startswith(VMRS_PREFIX):
        profile, *opts = backend[len(VMRS_PREFIX):].split(":")
        extra = []
        for o in opts:  # "fault=NAME": a fault profile (Documentation/test-device.md)
            key, _, val = o.partition("=")
            if key != "fault" or not val:
                raise RigError(f"unknown vmrs backend option {o!r} in {backend!r}")
            extra += ["--fault", val]
        return [str(ensure_vmrs_device()), "--socket-path", str(sock), "--profile", profile,
                *extra]
    return [str(art.vdm), "--socket-path", str(sock), "--backend", backend]


# The files of the driver's out-of-tree build (a module built elsewhere than the repository is
# built from a copy of these: bench/'s baseline module and its production-kernel builds).
MODULE_FILES = ("Kbuild", "Makefile", "bindings.h", "bindings_helpers.c", "*.rs")


def build_module(kbuild: Path, source: Path = REPO) -> Path:
    """`make KDIR=kbuild` in `source` (a directory with the driver's Kbuild and sources)."""
    if not (source / "Makefile").exists() and not (source / "Kbuild").exists():
        raise RigError(f"no Makefile/Kbuild in {source}: the driver is not there yet (use --no-module)")
    t = time.monotonic()
    p = subprocess.run(["make", f"KDIR={kbuild}"], cwd=source, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.stderr.write("\n".join(p.stdout.splitlines()[-60:]) + "\n")
        raise RigError(f"module build failed: make KDIR={kbuild} in {source} (exit {p.returncode})")
    ko = source / f"{MODULE_NAME}.ko"
    if not ko.exists():
        raise RigError(f"make succeeded but {ko} does not exist")
    log(f"module built in {time.monotonic() - t:.1f} s ({source})")
    return ko


def module_source(rev: Optional[str], kbuild: Path) -> Path:
    """A build directory for the driver as of git revision `rev` (None: the work tree), for
    kernel `kbuild`, under the cache: a copy of MODULE_FILES, so that builds for other kernels
    or revisions never touch the objects of the repository's own build."""
    cache = _lib_vars()["CACHE"]
    if rev is None:
        files = sorted({f for pat in MODULE_FILES for f in REPO.glob(pat)})
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        label = "worktree-" + h.hexdigest()[:12]
    else:
        full = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, check=True).stdout.strip()
        label = "rev-" + full[:12]
    dest = cache / "modules" / f"{label}-{kbuild.name}"
    if (dest / f"{MODULE_NAME}.ko").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if rev is None:
        for f in files:
            shutil.copy2(f, dest / f.name)
    else:
        specs = [f":(glob){pat}" for pat in MODULE_FILES]  # top level only
        arch = subprocess.run(["git", "archive", full, "--", *specs], cwd=REPO,
                              stdout=subprocess.PIPE, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=arch, check=True)
    return dest


def kernel_build(flavor: str = "debug") -> Path:
    """The guest kernel's build tree (scripts/build-kernel.sh; VMRS_KERNEL_FLAVOR=flavor)."""
    env = dict(os.environ, VMRS_KERNEL_FLAVOR=flavor)
    p = subprocess.run([str(SCRIPTS / "build-kernel.sh")], stdout=subprocess.PIPE, text=True,
                       cwd=REPO, env=env)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    if p.returncode != 0 or not lines:
        raise RigError(f"build-kernel.sh ({flavor}) failed (exit {p.returncode})")
    return Path(lines[-1].strip())


def ensure_built(module: bool = True, kernel: str = "debug",
                 module_rev: Optional[str] = None) -> Artifacts:
    """Kernel, QEMU, host tools and (if module) virtio_media.ko, each via its build script.

    `kernel`: "debug" (the test kernel) or "production" (bench/ only; scripts/lib.sh).
    `module_rev`: build the driver as of that git revision (bench/'s baseline) instead of the
    repository's work tree. The debug kernel's work-tree module is built in the repository
    itself (what `make` builds); any other combination in a copy (module_source).

    The scripts serialise heavy builds on $CACHE/build.lock and return at once when their
    output is cached. Memoised per process: each module is rebuilt once per process at most.
    """
    key = (bool(module), kernel, module_rev)
    if key in _built:
        return _built[key]
    kbuild = kernel_build(kernel)
    bzimage = kbuild / "arch/x86/boot/bzImage"
    krelease = (kbuild / "include/config/kernel.release").read_text().strip()
    qemu = Path(_script_stdout([str(SCRIPTS / "build-qemu.sh")]))
    v = _lib_vars()
    vdm = v["CACHE"] / f"vhost-device-media-{v['VDM_VER']}" / "bin" / "vhost-device-media"
    if not os.access(vdm, os.X_OK):
        # build-tools.sh takes the build lock unconditionally: only call it when needed.
        subprocess.run([str(SCRIPTS / "build-tools.sh")], check=True, cwd=REPO)
    for f in (bzimage, qemu, vdm):
        if not f.exists():
            raise RigError(f"{f} missing after the build scripts ran")
    ko = None
    if module:
        if kernel == "debug" and module_rev is None:
            ko = build_module(kbuild)
        else:
            ko = build_module(kbuild, module_source(module_rev, kbuild))
    art = Artifacts(kbuild, bzimage, krelease, qemu, vdm, ko)
    _built[key] = art
    return art


# --------------------------------------------------------------------------------------------
# Splat check


def find_splats(text: str, allow: Iterable[str] = ()) -> list:
    """Lines of a kernel log that look like a splat, minus the benign and allowed ones."""
    pat = re.compile("|".join(f"(?:{p})" for p in SPLAT_PATTERNS))
    ok = [re.compile(p) for p in list(SPLAT_BENIGN) + list(allow)]
    return [l for l in text.splitlines() if pat.search(l) and not any(o.search(l) for o in ok)]


# Driver warnings: dmesg -r lines "<L>[time] virtio_media <dev>: ..." with L <= 4 (KERN_WARNING).
_DRIVER_LINE = re.compile(r"^<(\d+)>\[\s*[\d.]+\] (virtio_media \S+: .*)$", re.M)


def driver_warnings(dmesg_raw: str, expected: Iterable[str] = (), dev: Optional[str] = None) -> list:
    """The driver's warning (or worse) lines in a raw dmesg that match none of `expected`;
    only those of device `dev` ("virtio3") if given. The facility bits of <L> are masked."""
    ok = [re.compile(p) for p in expected]
    out = []
    for m in _DRIVER_LINE.finditer(dmesg_raw):
        level, text = int(m.group(1)) & 7, m.group(2)
        if level > 4 or (dev and not text.startswith(f"virtio_media {dev}:")):
            continue
        if not any(o.search(text) for o in ok):
            out.append(text)
    return out


def device_panics(device_log: str) -> list:
    """Lines of a backend's log that say it panicked (our device turns a panic in a command
    into EIO and logs "the device panicked"; any other thread's panic prints "panicked at")."""
    return [l for l in device_log.splitlines() if "panicked" in l]


# --------------------------------------------------------------------------------------------
# One run


@dataclasses.dataclass
class GuestResult:
    stdout: str
    stderr: str
    status: Optional[int]      # the command's exit status (124: timed out in the guest)
    dmesg: str
    splats: list               # splat lines found (whether or not check_splats was on)
    run_dir: Path
    wall_time: float           # s, QEMU start to QEMU exit
    boot_time: Optional[float]  # s, guest uptime when PID 1 started
    cmd_time: Optional[float]   # s, the command's run time in the guest
    kmemleak: str = ""
    backend_exit: Optional[int] = None  # the backend's status if it exited before QEMU
    dmesg_raw: str = ""        # the dmesg with "<level>" prefixes (busybox dmesg -r)
    guest: Optional["Guest"] = None

    def device_log(self, i: int = 0) -> str:
        """The log of backend i (vdm.log, or vdm<i>.log with several devices)."""
        return self.guest.device_log(i) if self.guest else ""

    @property
    def dmesg_path(self) -> Path:
        return self.run_dir / "share" / "dmesg"

    check_splats: bool = True

    @property
    def exit_code(self) -> int:
        if self.splats and self.check_splats:
            return EXIT_SPLAT
        return self.status if self.status is not None else EXIT_NO_REPORT


def _q(path) -> str:
    """A path as a QEMU option value (commas doubled)."""
    return str(path).replace(",", ",,")


def _pdeathsig():
    # Children die with us even if we are SIGKILLed (no orphaned QEMU holding the sockets).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _kill(p: Optional[subprocess.Popen], grace: float = 5.0) -> Optional[int]:
    if p is None:
        return None
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def _prune_runs() -> None:
    try:
        runs = sorted((d for d in RUNS_ROOT.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
    except FileNotFoundError:
        return
    for d in runs[:-KEEP_RUNS]:
        if time.time() - d.stat().st_mtime > 3600:
            shutil.rmtree(d, ignore_errors=True)


def _install_modules(art: Artifacts, root: Path) -> None:
    """The guest kernel's modules (+ ours in extra/) as ROOT/lib/modules/$(uname -r), depmod'ed."""
    dest = root / "lib" / "modules" / art.krelease
    dest.mkdir(parents=True)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (art.kbuild / name).exists():
            shutil.copy2(art.kbuild / name, dest / name)
    order = art.kbuild / "modules.order"
    for line in (order.read_text().split() if order.exists() else []):
        rel = Path(line).with_suffix(".ko")
        if (art.kbuild / rel).exists():
            (dest / "kernel" / rel.parent).mkdir(parents=True, exist_ok=True)
            shutil.copy2(art.kbuild / rel, dest / "kernel" / rel)
    if art.module:
        (dest / "extra").mkdir()
        shutil.copy2(art.module, dest / "extra" / art.module.name)
    p = subprocess.run(["depmod", "-b", str(root), art.krelease], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RigError(f"depmod -b {root} {art.krelease} failed: {p.stdout}")


class Guest:
    """One guest run. `run()` does it all; or start(), interact (hmp/qmp/wait_for_file), wait().

        with Guest("touch $VMRS_OUT/ready; sleep 30", backend="simple-capture") as g:
            g.wait_for_file("ready")
            g.hmp("device_del vmedia")
            res = g.wait()
    """

    def __init__(self, cmd: str, backend="simple-capture", module=True,
                 timeout: int = 300, udev: bool = False, kmemleak: bool = False,
                 check_splats: bool = True, allow_splats: Iterable[str] = (),
                 keep: Optional[os.PathLike] = None,
                 extra_qemu_args: Sequence[str] = (), extra_cmdline: str = "",
                 console: bool = False, boot_timeout: int = BOOT_TIMEOUT,
                 expect_warnings: Optional[Iterable[str]] = (),
                 expect_device_panic: bool = False, files: Optional[dict] = None,
                 kernel: str = "debug", module_rev: Optional[str] = None,
                 backend_env: Optional[dict] = None):
        # module: True/"load" = build, install, modprobe; "install" = build and install into
        # /lib/modules without loading (autoload tests); False/"none" = not built, not installed.
        mod = {True: "load", False: "none"}.get(module, module)
        if mod not in ("load", "install", "none"):
            raise ValueError(f"module={module!r}")
        self.cmd, self.module, self.timeout = cmd, mod, int(timeout)
        # kernel: "debug" (tests) or "production" (bench/); module_rev: the driver as of that
        # git revision instead of the work tree (bench/'s baseline). See ensure_built.
        self.kernel, self.module_rev = kernel, module_rev
        # Extra environment of the backend processes (VMRS_DEVICE_STATS=1: bench/).
        self.backend_env = dict(backend_env or {})
        # backend: one name (device "vmedia", socket vdm.sock, log vdm.log) or a list of names:
        # several virtio-media devices in one guest ("vmedia0".., vdm0.sock.., vdm0.log..), the
        # device of backends[i] in PCI slot DEVICE_SLOT0 + i (guest: tests/guest_tools/node).
        if isinstance(backend, str):
            self.backends = [] if backend == "none" else [backend]
            self.multi = False
        else:
            self.backends = list(backend)
            self.multi = True
        self.backend = backend
        if len(self.backends) > MAX_DEVICES:
            raise ValueError(f"{len(self.backends)} devices: at most {MAX_DEVICES} fit on the bus")
        # Driver warnings (dmesg lines of virtio_media at KERN_WARNING or worse) that do not match
        # one of these regexes fail the run like a splat; None: not checked.
        self.expect_warnings = None if expect_warnings is None else list(expect_warnings)
        self.expect_device_panic = expect_device_panic
        self.files = dict(files or {})
        self.udev, self.kmemleak = udev, kmemleak
        self.check_splats, self.allow_splats = check_splats, list(allow_splats)
        self.keep = keep
        self.extra_qemu_args, self.extra_cmdline = list(extra_qemu_args), extra_cmdline
        self.console, self.boot_timeout = console, boot_timeout
        self.qemu_p: Optional[subprocess.Popen] = None
        self.vdm_ps: list = []
        self.run_dir: Optional[Path] = None
        self._result: Optional[GuestResult] = None
        self._stop_console = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def run(self) -> GuestResult:
        try:
            self.start()
            return self.wait()
        finally:
            self.close()

    def start(self) -> None:
        art = ensure_built(self.module != "none", self.kernel, self.module_rev)
        if " " in str(REPO):
            raise RigError(f"repository path {REPO} has a space: it cannot go on the kernel command line")
        if self.keep:
            run = Path(self.keep).resolve()
            if run.exists() and any(run.iterdir()):
                raise RigError(f"--keep {run}: directory exists and is not empty")
            run.mkdir(parents=True, exist_ok=True)
        else:
            RUNS_ROOT.mkdir(parents=True, exist_ok=True)
            _prune_runs()
            run = Path(tempfile_mkdtemp(RUNS_ROOT))
        self.run_dir = run
        share = run / "share"
        share.mkdir()
        # Sockets: the run dir unless its path is too long for sun_path (108 bytes).
        self.sock_dir = run if len(str(run)) < 80 else Path(tempfile_mkdtemp(Path("/tmp"), "vmrs-s"))

        # The guest bind-mounts share/modroot/lib/modules on /lib/modules: it must exist on the
        # host root, which the guest sees read-only.
        Path("/lib/modules").mkdir(exist_ok=True)
        _install_modules(art, share / "modroot")  # in-tree ones always, ours unless module="none"
        (share / "cmd.sh").write_text(self.cmd + "\n")
        for rel, text in self.files.items():
            (share / rel).parent.mkdir(parents=True, exist_ok=True)
            (share / rel).write_text(text)
        (share / "config").write_text(
            f"VMRS_TIMEOUT={self.timeout}\nVMRS_MODULE={self.module}\n"
            f"VMRS_UDEV={int(self.udev)}\nVMRS_KMEMLEAK={int(self.kmemleak)}\n"
            f"VMRS_REPO='{REPO}'\n")

        for i, b in enumerate(self.backends):
            sock = self.sock_dir / self.device_file(i, "sock")
            logp = run / self.device_file(i, "log")
            backend_cmd = backend_command(b, sock, art)
            name = Path(backend_cmd[0]).name
            with open(logp, "wb") as logf:
                self.vdm_ps.append(subprocess.Popen(
                    backend_cmd,
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    env=dict(os.environ, **self.backend_env),
                    start_new_session=True, preexec_fn=_pdeathsig))
        for i, p in enumerate(self.vdm_ps):
            sock = self.sock_dir / self.device_file(i, "sock")
            t = time.monotonic()
            while not sock.exists():
                if p.poll() is not None:
                    raise RigError(f"backend {self.backends[i]} exited ({p.returncode}): "
                                   f"{self.device_log(i)[-2000:]}")
                if time.monotonic() - t > 20:
                    raise RigError(f"backend {self.backends[i]} did not create its socket in 20 s")
                time.sleep(0.02)

        cmdline = " ".join([
            "console=ttyS0", "loglevel=7", "log_buf_len=8M", "printk.devkmsg=on", "panic=-1",
            "root=/dev/root", "rootfstype=9p",
            "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose", "ro",
            f"init={GUEST_INIT}",
        ] + (["kmemleak=on"] if self.kmemleak else []) + ([self.extra_cmdline] if self.extra_cmdline else []))
        args = [
            str(art.qemu),
            "-machine", "pc", "-accel", "tcg", "-cpu", "max,la57=off", "-smp", "2,sockets=2,cores=1,threads=1", "-m", "1G",
            "-object", "memory-backend-memfd,id=mem,size=1G,share=on", "-numa", "node,memdev=mem",
            "-nodefaults", "-nographic", "-no-reboot",
            "-serial", f"file:{_q(run / 'serial.log')}",
            "-monitor", f"unix:{_q(self.sock_dir / 'monitor.sock')},server=on,wait=off",
            "-qmp", f"unix:{_q(self.sock_dir / 'qmp.sock')},server=on,wait=off",
            "-kernel", str(art.bzimage), "-append", cmdline,
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
            "-fsdev", f"local,id=vmrs,path={_q(share)},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=vmrs,mount_tag=vmrs",
        ]
        for i in range(len(self.backends)):
            sock = self.sock_dir / self.device_file(i, "sock")
            media = QEMU_DEVICE == "media" and not self.backends[i].startswith(GENERIC_PREFIX)
            args += ["-chardev", f"socket,id=c{i},path={_q(sock)}", "-device",
                     (f"vhost-user-media-pci,id={self.device_id(i)},chardev=c{i},"
                      if media else
                      f"vhost-user-device-pci,id={self.device_id(i)},chardev=c{i},"
                      "virtio-id=48,num_vqs=2,config_size=40,")
                     + f"addr={DEVICE_SLOT0 + i:#x}"]
        args += self.extra_qemu_args
        (run / "qemu.cmd").write_text(" ".join(f"'{a}'" if " " in a else a for a in args) + "\n")
        self.t_start = time.monotonic()
        with open(run / "qemu.log", "wb") as logf:
            self.qemu_p = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_pdeathsig)
        self.deadline = self.t_start + self.boot_timeout + self.timeout + 30
        if self.console:
            threading.Thread(target=self._tail_console, daemon=True).start()

    def _tail_console(self) -> None:
        path = self.run_dir / "serial.log"
        while not path.exists():
            if self._stop_console.is_set():
                return
            time.sleep(0.05)
        with open(path, "rb") as f:
            while True:
                chunk = f.read(65536)
                if chunk:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                elif self._stop_console.is_set():
                    return
                else:
                    time.sleep(0.05)

    def close(self) -> None:
        """Kills QEMU and the backend (idempotent)."""
        _kill(self.qemu_p)
        self._stop_console.set()
        for p in self.vdm_ps:
            if p.poll() is None:
                _kill(p)
        if getattr(self, "sock_dir", None) and self.sock_dir != self.run_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    # -- devices ---------------------------------------------------------------------------------

    def device_id(self, i: int) -> str:
        """QEMU id of device i (for device_del): "vmedia" alone, "vmedia<i>" of several."""
        return f"vmedia{i}" if self.multi else "vmedia"

    def device_file(self, i: int, ext: str) -> str:
        return f"vdm{i}.{ext}" if self.multi else f"vdm.{ext}"

    def device_log(self, i: int = 0) -> str:
        """The log of backend i (its stdout and stderr)."""
        p = self.run_dir / self.device_file(i, "log")
        return p.read_text(errors="replace") if p.exists() else ""

    # -- interaction while the guest runs ------------------------------------------------------

    def wait_for_file(self, name: str, timeout: float = 120) -> Path:
        """Waits until the guest creates $VMRS_OUT/NAME (the rw share). Raises if QEMU exits."""
        path = self.run_dir / "share" / name
        t = time.monotonic()
        while not path.exists():
            if self.qemu_p.poll() is not None:
                raise GuestNoReport(f"QEMU exited before the guest created {name}")
            if time.monotonic() - t > timeout:
                raise GuestNoReport(f"the guest did not create {name} in {timeout} s")
            time.sleep(0.05)
        return path

    def hmp(self, command: str, timeout: float = 30) -> str:
        """One human-monitor command (e.g. "device_del vmedia"); returns its output."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock_dir / "monitor.sock"))
            buf = b""
            while not buf.endswith(b"(qemu) "):
                buf += s.recv(4096)
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b"(qemu) "):
                d = s.recv(4096)
                if not d:
                    break
                buf += d
        out = buf.decode(errors="replace").replace("\r", "")
        out = out[:-len("(qemu) ")] if out.endswith("(qemu) ") else out
        lines = out.split("\n")
        return "\n".join(lines[1:]).strip()  # drop the echoed command

    def qmp(self, execute: str, arguments: Optional[dict] = None, timeout: float = 30) -> dict:
        """One QMP command; returns the whole reply (with "return" or "error")."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock_dir / "qmp.sock"))
            f = s.makefile("rwb")
            json.loads(f.readline())  # greeting
            for msg in ({"execute": "qmp_capabilities"},
                        {"execute": execute, **({"arguments": arguments} if arguments else {})}):
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            return reply

    # -- completion ----------------------------------------------------------------------------

    def wait(self) -> GuestResult:
        """Waits for the guest to report and power off; collects and checks the results."""
        share = self.run_dir / "share"
        status_file = share / "status"
        deadline = self.deadline
        reported = False
        backend_exit = None
        while self.qemu_p.poll() is None:
            now = time.monotonic()
            for i, p in enumerate(self.vdm_ps):
                if backend_exit is None and not reported and p.poll() is not None:
                    backend_exit = p.returncode
                    log(f"vhost-user backend {i} exited ({backend_exit}) while the guest ran, "
                        f"{now - self.t_start:.1f} s after QEMU started; see "
                        f"{self.run_dir / self.device_file(i, 'log')}")
            if not reported and (status_file.exists() or (share / "setup-failed").exists()):
                reported = True
                deadline = min(deadline, now + 30)  # it reboots right away; give it 30 s
            if now > deadline:
                if not reported:
                    log(f"host deadline ({self.boot_timeout + self.timeout + 30} s) passed: killing QEMU")
                _kill(self.qemu_p)
                break
            time.sleep(0.05)
        wall = time.monotonic() - self.t_start
        self._stop_console.set()

        def read(name: str) -> str:
            p = share / name
            return p.read_text(errors="replace") if p.exists() else ""

        timing = dict(l.split() for l in read("timing").splitlines() if len(l.split()) == 2)
        boot = float(timing["init"]) if "init" in timing else None
        cmd_t = float(timing["cmd_end"]) - float(timing["cmd_start"]) if "cmd_end" in timing else None
        status = int(read("status")) if status_file.exists() else None
        dmesg = read("dmesg")
        serial = (self.run_dir / "serial.log")
        serial_text = serial.read_text(errors="replace") if serial.exists() else ""
        kmemleak = read("kmemleak")
        splats = find_splats(dmesg or serial_text, self.allow_splats)
        if kmemleak.strip():
            splats += ["kmemleak: " + l for l in kmemleak.splitlines()[:40]]
        dmesg_raw = read("dmesg.raw")
        if self.expect_warnings is not None:
            splats += ["unexpected driver warning: " + l
                       for l in driver_warnings(dmesg_raw, self.expect_warnings)]
        if not self.expect_device_panic:
            for i in range(len(self.backends)):
                splats += [f"device {i} ({self.backends[i]}): {l}"
                           for l in device_panics(self.device_log(i))]
        res = GuestResult(stdout=read("stdout"), stderr=read("stderr"), status=status,
                          dmesg=dmesg, splats=splats, run_dir=self.run_dir, wall_time=wall,
                          boot_time=boot, cmd_time=cmd_t, kmemleak=kmemleak,
                          backend_exit=backend_exit, check_splats=self.check_splats,
                          dmesg_raw=dmesg_raw, guest=self)
        self._result = res
        parts = [f"boot+run {wall:.1f} s"]
        if boot is not None:
            parts.append(f"kernel to init {boot:.1f} s")
        if cmd_t is not None:
            parts.append(f"command {cmd_t:.1f} s")
        log(", ".join(parts) + f"; run dir {self.run_dir}")
        if dmesg:
            log(f"guest dmesg: {res.dmesg_path}")
        RUN_LOG.append((self.cmd, res))

        if (share / "setup-failed").exists():
            self._print_splats(splats)
            raise RigError(f"guest setup failed: {read('setup-failed').strip()}"
                           f"\n--- init.log ---\n{read('init.log')[-3000:]}")
        if status is None:
            self._print_splats(splats)
            tail = "\n".join(serial_text.splitlines()[-40:])
            qlog = (self.run_dir / "qemu.log").read_text(errors="replace")[-2000:]
            raise GuestNoReport(
                f"the guest never reported back (wall {wall:.0f} s, QEMU exit "
                f"{self.qemu_p.returncode}); serial log tail:\n{tail}"
                + (f"\n--- qemu.log ---\n{qlog}" if qlog.strip() else ""))
        if splats and not self.check_splats:
            log(f"{len(splats)} splat line(s) in the guest dmesg, not checked (check_splats off)")
        if splats and self.check_splats:
            self._print_splats(splats)
            err = SplatError(f"kernel splat in the guest dmesg ({res.dmesg_path}):\n" + "\n".join(splats))
            err.result = res
            raise err
        return res

    @staticmethod
    def _print_splats(splats: list) -> None:
        if splats:
            log("kernel splat lines:")
            for l in splats:
                print(f"  {l}", file=sys.stderr)


# Every finished run of this process: (command, GuestResult); conftest.py prints a summary.
RUN_LOG: list = []


def tempfile_mkdtemp(parent: Path, prefix: str = "") -> str:
    import tempfile
    return tempfile.mkdtemp(prefix=prefix or time.strftime("%Y%m%d-%H%M%S-"), dir=parent)


def run_guest(cmd: str, backend: str = "simple-capture", module=True, timeout: int = 300,
              **kw) -> GuestResult:
    """Boots a guest, runs `cmd` (bash) in it, returns the result.

    Raises SplatError (an AssertionError) if the guest dmesg has a splat (unless
    check_splats=False or the lines match allow_splats), GuestNoReport if the guest never
    reported back, RigError if the rig failed. The command's status is returned, not checked.
    See Guest for the other keywords (udev, kmemleak, keep, extra_qemu_args, ...).
    """
    return Guest(cmd, backend=backend, module=module, timeout=timeout, **kw).run()


# --------------------------------------------------------------------------------------------
# CLI (scripts/guest-run)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="guest-run",
        description="Boot the virtio-media test guest (QEMU TCG) and run a shell command in it.",
        epilog="Exit status: the command's own, or 125 kernel splat, 124 command timed out, "
               "123 guest never reported back, 122 rig failure. See Documentation/rig.md.")
    ap.add_argument("--backend", action="append", default=[],
                    help="vhost-device-media backend: null, simple-capture (default); "
                         "vmrs:PROFILE = our own test device (tests/device), e.g. "
                         "vmrs:capture-mplane; none = no virtio-media device. Repeat for "
                         "several devices (QEMU ids vmedia0.., logs vdm0.log..; in the guest "
                         "tests/guest_tools/node I prints device I's /dev/videoN)")
    ap.add_argument("--expect-warning", action="append", default=[], metavar="REGEX",
                    help="a driver warning matching REGEX does not fail the run (repeatable); "
                         "any other virtio_media warning does")
    ap.add_argument("--no-module", action="store_true", help="do not build, install or load virtio_media.ko")
    ap.add_argument("--no-load", action="store_true",
                    help="build and install virtio_media.ko into /lib/modules but do not load it")
    ap.add_argument("--udev", action="store_true", help="start systemd-udevd in the guest before the command")
    ap.add_argument("--kmemleak", action="store_true",
                    help="boot with kmemleak=on; leaks found after the command are splats")
    ap.add_argument("--timeout", type=int, default=300, help="command timeout in the guest, s (default 300)")
    ap.add_argument("--keep", metavar="DIR", help="use DIR (new or empty) as the run directory")
    ap.add_argument("--allow-splat", action="append", default=[], metavar="REGEX",
                    help="dmesg lines matching REGEX are not splats (repeatable)")
    ap.add_argument("--no-splat-check", action="store_true", help="do not fail on kernel splats")
    ap.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                    help="extra QEMU argument (repeatable)")
    ap.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    ap.add_argument("--console", action="store_true", help="copy the guest serial console to stderr")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- 'shell command'")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command: guest-run [options] -- 'shell command'")
    if a.no_module and a.no_load:
        ap.error("--no-module and --no-load exclude each other")
    module = "none" if a.no_module else "install" if a.no_load else "load"

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    backend = a.backend[0] if len(a.backend) == 1 else a.backend or "simple-capture"
    g = Guest(" ".join(cmd), backend=backend, module=module, expect_warnings=a.expect_warning, timeout=a.timeout, udev=a.udev,
              kmemleak=a.kmemleak, check_splats=not a.no_splat_check, allow_splats=a.allow_splat,
              keep=a.keep, extra_qemu_args=a.qemu_arg, extra_cmdline=a.append, console=a.console)
    t = time.monotonic()
    try:
        g.start()
        res = g.wait()
    except SplatError as e:
        r = e.result
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        log(f"FAIL: kernel splat (command status {r.status}); see {r.dmesg_path}")
        return EXIT_SPLAT
    except GuestNoReport as e:
        log(f"FAIL: {e}")
        return EXIT_NO_REPORT
    except (RigError, subprocess.CalledProcessError) as e:
        log(f"FAIL: {e}")
        return EXIT_SETUP
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        g.close()
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    log(f"total {time.monotonic() - t:.1f} s (builds included); command exit status {res.status}")
    return res.status


if __name__ == "__main__":
    sys.exit(main())
