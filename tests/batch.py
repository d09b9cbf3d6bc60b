"""Several test jobs in one guest boot (see Documentation/rig.md, "Batches").

A guest boot under TCG with the debug kernel costs 15-25 s before the first command (60 s with
kmemleak), so tests that need the same kernel options share one boot: each job is a shell
command run in turn, with its own stdout, stderr, status and time limit, against one of the
guest's virtio-media devices (`backends[i]` is device i, `$VMRS_DEV` its /dev/videoN,
`$VMRS_VIRTIO` its virtioK, `$VMRS_JOB_OUT` a directory of the share for the job's files). Marks in the kernel log delimit each job, so a splat or a driver
warning is charged to the job during which it was printed; kmemleak's report (scanned once,
after the last job) and anything printed outside a job are charged to every job.

    b = Batch(["vmrs:capture", "vmrs:output"], kmemleak=True)
    b.add("cap", "v4l2-ctl -d $VMRS_DEV --all", dev=0)
    b.add("out", "v4l2-ctl -d $VMRS_DEV --all", dev=1, expect_warnings=[r"bad DQBUF"])
    jobs = b.run()
    j = jobs["cap"]; j.status, j.stdout, j.dmesg, j.device_log, j.problems
    j.check()        # raises AssertionError listing j.problems
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional

from guest import Guest, GuestNoReport, REPO, driver_warnings, device_panics, find_splats

NODE = f"{REPO}/tests/guest_tools/node"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclasses.dataclass
class Job:
    name: str
    cmd: str
    dev: Optional[int]
    timeout: int
    expect_warnings: list
    allow_splats: list
    expect_device_panic: bool
    pause: float


# The kernel rate-limits a warning per call site (DEFAULT_RATELIMIT_INTERVAL, 5 s, bursts of
# 10), for every device at once: a job that expects the driver to say something waits out the
# interval the previous job's warnings may have opened, or its own lines could be suppressed.
RATELIMIT_PAUSE = 5.5


@dataclasses.dataclass
class JobResult:
    name: str
    status: Optional[int]   # the job's exit status (124: its time limit); None: never ran
    stdout: str
    stderr: str
    dmesg: str              # the kernel log printed while the job ran
    dmesg_raw: str          # the same with "<level>" prefixes
    device_log: str         # the whole log of the job's device ("" without a device)
    virtio: Optional[str]   # the job's device in the guest ("virtio3")
    seconds: Optional[float]
    problems: list          # splats, unexpected driver warnings, device panics, leaks
    run_dir: object

    @property
    def dir(self):
        """The job's own directory in the share ($VMRS_JOB_OUT in the guest): its files."""
        return self.run_dir / "share" / "jobs" / self.name

    def check(self) -> None:
        """Fails (AssertionError) if the job had a splat, an unexpected driver warning, a
        device panic, or if the boot had a kmemleak report or a splat outside any job."""
        assert not self.problems, (f"job {self.name} ({self.run_dir}):\n" +
                                   "\n".join(self.problems))


class Batch:
    """Jobs that share one guest boot; Guest keywords (kmemleak, udev, ...) apply to all."""

    def __init__(self, backends: Iterable[str], expect_warnings: Iterable[str] = (), **guest_kw):
        self.backends = list(backends)
        # Driver warnings printed outside every job (at boot, module load) that are expected.
        self.expect_warnings = list(expect_warnings)
        self.guest_kw = guest_kw
        self.jobs: list = []

    def add(self, name: str, cmd: str, dev: Optional[int] = None, timeout: int = 300,
            expect_warnings: Iterable[str] = (), allow_splats: Iterable[str] = (),
            expect_device_panic: bool = False, pause: Optional[float] = None) -> None:
        """`pause`: seconds to wait before the job (default: RATELIMIT_PAUSE if it expects
        warnings, else 0)."""
        if not _NAME.match(name) or any(j.name == name for j in self.jobs):
            raise ValueError(f"bad or duplicate job name {name!r}")
        if dev is not None and not 0 <= dev < len(self.backends):
            raise ValueError(f"job {name}: no device {dev}")
        if pause is None:
            pause = RATELIMIT_PAUSE if expect_warnings else 0.0
        self.jobs.append(Job(name, cmd, dev, int(timeout), list(expect_warnings),
                             list(allow_splats), expect_device_panic, float(pause)))

    def script(self) -> str:
        lines = ["cd /tmp",
                 f"for i in $(seq 0 {len(self.backends) - 1}); do "
                 f"echo \"$i $({NODE} $i virtio) $({NODE} $i video)\"; done "
                 "> $VMRS_OUT/devices"]
        for j in self.jobs:
            d = f"$VMRS_OUT/jobs/{j.name}"
            env = f"VMRS_JOB_OUT={d} "
            if j.dev is not None:
                env += f"VMRS_DEV=$({NODE} {j.dev} video) VMRS_VIRTIO=$({NODE} {j.dev} virtio) "
            if j.pause:
                lines.append(f"sleep {j.pause}")
            lines += [
                f"echo 'vmrs: job {j.name} start' > /dev/kmsg",
                "read -r t0 _ < /proc/uptime",
                f"env {env}timeout -k 10 {j.timeout} bash {d}/cmd.sh </dev/null "
                f">{d}/stdout 2>{d}/stderr; echo $? > {d}/status",
                "read -r t1 _ < /proc/uptime",
                f"echo \"$t0 $t1\" > {d}/time",
                f"echo 'vmrs: job {j.name} end' > /dev/kmsg",
            ]
        return "\n".join(lines) + "\n"

    def run(self) -> dict:
        """Boots once, runs every job, returns {name: JobResult}. Raises GuestNoReport if the
        guest never reported back (then no job has a result) and RigError on rig failures."""
        total = sum(j.timeout + 15 + j.pause for j in self.jobs) + 60
        files = {f"jobs/{j.name}/cmd.sh": j.cmd + "\n" for j in self.jobs}
        allow = [p for j in self.jobs for p in j.allow_splats]
        kw = dict(self.guest_kw)
        kw.setdefault("timeout", total)
        g = Guest(self.script(), backend=self.backends, files=files, check_splats=False,
                  allow_splats=allow, expect_warnings=None, expect_device_panic=True, **kw)
        res = g.run()
        if res.status is None:
            raise GuestNoReport(f"batch guest never reported ({res.run_dir})")
        share = res.run_dir / "share"

        def read(rel: str) -> str:
            p = share / rel
            return p.read_text(errors="replace") if p.exists() else ""

        virtio = {}
        for line in read("devices").splitlines():
            parts = line.split()
            if len(parts) >= 2:
                virtio[int(parts[0])] = parts[1]
        slices, raw_slices = _slices(res.dmesg), _slices(res.dmesg_raw)
        # Everything outside the jobs (boot, kmemleak) counts against every job.
        common = find_splats(slices.get(None, ""), allow)
        common += ["unexpected driver warning outside the jobs: " + l for l in
                   driver_warnings(raw_slices.get(None, ""), self.expect_warnings)]
        if res.kmemleak.strip():
            common += ["kmemleak: " + l for l in res.kmemleak.splitlines()[:40]]
        if res.status != 0:
            common.append(f"the batch script exited {res.status} (guest time limit {total} s?)")
        out = {}
        for j in self.jobs:
            st = read(f"jobs/{j.name}/status").strip()
            t = read(f"jobs/{j.name}/time").split()
            dev_log = res.device_log(j.dev) if j.dev is not None else ""
            vname = virtio.get(j.dev) if j.dev is not None else None
            problems = list(common)
            problems += find_splats(slices.get(j.name, ""), j.allow_splats)
            problems += ["unexpected driver warning: " + l for l in
                         driver_warnings(raw_slices.get(j.name, ""), j.expect_warnings)]
            if j.dev is not None and not j.expect_device_panic:
                problems += [f"device {j.dev} panicked: {l}" for l in device_panics(dev_log)]
            if not st:
                problems.append("the job never finished")
            out[j.name] = JobResult(
                name=j.name, status=int(st) if st else None, stdout=read(f"jobs/{j.name}/stdout"),
                stderr=read(f"jobs/{j.name}/stderr"), dmesg=slices.get(j.name, ""),
                dmesg_raw=raw_slices.get(j.name, ""), device_log=dev_log, virtio=vname,
                seconds=float(t[1]) - float(t[0]) if len(t) == 2 else None,
                problems=problems, run_dir=res.run_dir)
        return out


def ok(job: JobResult) -> JobResult:
    """The job ran to status 0 with no splat, leak, device panic or unexpected warning."""
    job.check()
    assert job.status == 0, (job.status, job.stdout, job.stderr)
    return job


_MARK = re.compile(r"vmrs: job (\S+) (start|end)$")


def _slices(dmesg: str) -> dict:
    """{job name: its lines, None: the lines outside every job} of a kernel log."""
    out: dict = {}
    cur = None
    for line in dmesg.splitlines():
        m = _MARK.search(line)
        if m:
            cur = m.group(1) if m.group(2) == "start" else None
            continue
        out.setdefault(cur, []).append(line)
    return {k: "\n".join(v) + "\n" for k, v in out.items()}
