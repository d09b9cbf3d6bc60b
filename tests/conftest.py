"""pytest harness for the virtio-media guest tests (see Documentation/rig.md).

Tests boot guests with guest.run_guest(); the first call in a session builds (or finds cached)
the kernel, QEMU, the host tools and, unless module=False, virtio_media.ko.
Tests that boot a guest carry the `guest` marker (`-m "not guest"` runs only the fast ones).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "guest: boots a QEMU guest (slow: TCG)")


def pytest_terminal_summary(terminalreporter):
    if not guest.RUN_LOG:
        return
    tr = terminalreporter
    tr.section("guest runs")
    for cmd, r in guest.RUN_LOG:
        boot = f"{r.boot_time:.1f}" if r.boot_time is not None else "-"
        ct = f"{r.cmd_time:.1f}" if r.cmd_time is not None else "-"
        short = cmd.replace("\n", "; ")
        short = short if len(short) <= 60 else short[:57] + "..."
        tr.write_line(f"wall {r.wall_time:5.1f} s  kernel->init {boot:>5} s  command {ct:>5} s  "
                      f"status {r.status}  {r.run_dir}  {short}")
