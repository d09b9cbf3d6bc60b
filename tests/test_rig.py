"""Tests of the rig itself: the guest boots, sees the device, and the runner's contract holds."""
import pytest

import guest
from guest import SplatError, run_guest


@pytest.mark.guest
def test_guest_boots_and_sees_virtio_media_device(record_property):
    res = run_guest(
        "cat /sys/bus/virtio/devices/*/device; echo ---; v4l2-ctl --version",
        backend="simple-capture", module=False, timeout=120)
    record_property("boot_time", res.boot_time)
    record_property("wall_time", res.wall_time)
    print(f"wall {res.wall_time:.1f} s, kernel to init {res.boot_time} s")
    assert res.status == 0, res.stderr
    ids, _, version = res.stdout.partition("---\n")
    # 0x0030 = 48 = virtio-media; the two 0x0009 are the 9p shares.
    assert "0x0030" in ids.split(), ids
    assert version.startswith("v4l2-ctl "), version
    assert res.splats == []
    assert res.boot_time is not None and res.boot_time > 0


@pytest.mark.guest
def test_status_timeout_and_splat_reach_the_host():
    # A userspace line in the kernel log that the splat check must catch, a command exit
    # status that must come through, and output on both streams.
    cmd = "echo out; echo err >&2; echo 'WARNING: vmrs rig self-test' > /dev/kmsg; exit 7"
    with pytest.raises(SplatError) as ei:
        run_guest(cmd, backend="none", module=False, timeout=60)
    res = ei.value.result
    assert res.status == 7
    assert (res.stdout, res.stderr) == ("out\n", "err\n")
    assert any("WARNING: vmrs rig self-test" in l for l in res.splats)
    assert res.exit_code == guest.EXIT_SPLAT
    assert "vmrs: command exit status 7" in res.dmesg


@pytest.mark.guest
def test_command_timeout_in_guest():
    res = run_guest("sleep 600", backend="none", module=False, timeout=3)
    assert res.status == guest.EXIT_CMD_TIMEOUT


SAMPLE_DMESG = """\
[    0.000000] Linux version 6.12.117 (root@host) #1 SMP PREEMPT_DYNAMIC
[    0.120000] rcu: RCU lockdep checking is enabled.
[    0.130000] kasan: KernelAddressSanitizer initialized (generic)
[    5.000000] vmrs: command start
[    5.100000] ------------[ cut here ]------------
[    5.100001] WARNING: CPU: 1 PID: 90 at drivers/media/virtio/foo.rs:10 probe+0x10/0x20
[    5.100002] Call Trace:
[    5.200000] BUG: KASAN: slab-use-after-free in foo+0x1/0x2
[    5.300000] kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)
[    5.400000] refcount_t: underflow; use-after-free.
"""


def test_find_splats():
    s = guest.find_splats(SAMPLE_DMESG)
    assert [l.split("] ", 1)[1].split(":")[0] for l in s] == [
        "WARNING", "Call Trace", "BUG", "kmemleak", "refcount_t"]
    assert guest.find_splats(SAMPLE_DMESG, allow=[r"WARNING: CPU: \d+ PID: \d+ at drivers/media",
                                                  "Call Trace", "KASAN", "kmemleak", "refcount_t"]) == []
    assert guest.find_splats("[ 1.0] rcu: RCU lockdep checking is enabled.\n") == []


@pytest.mark.guest
def test_guest_setup_failure_is_a_rig_error(monkeypatch):
    # Ask the guest to load virtio_media while installing no such module: the init must report
    # the failed modprobe (setup-failed) instead of running the command.
    art = guest.ensure_built(module=False)
    monkeypatch.setattr(guest, "ensure_built", lambda module=True, kernel="debug", module_rev=None: art)
    with pytest.raises(guest.RigError, match="modprobe virtio_media failed"):
        run_guest("echo SHOULD-NOT-RUN", backend="none", module=True, timeout=60)
