"""v4l2-compliance output, host side: the summary, the two versions, the clean-run assertion.

The suite runs two versions in the guest: Debian bookworm's 1.22.1 (`v4l2-compliance` on the
host root) and v4l-utils 1.32 from Debian sid, which scripts/build-compliance.sh unpacks into a
private prefix under the rig's cache; `wrapper_path()` gives the command that starts it (the
guest sees the same path through its 9p root).

The output formats, from v4l-utils' utils/v4l2-compliance (identical in 1.22.1 and 1.32.0):

- header, first line: `v4l2-compliance 1.22.1, 64 bits, 64-bit time_t` (1.32 may append
  `, has no MMU`); `v4l2-compliance SHA: ...` follows only in builds from git;
- one summary line per device node tested, at the end of that node's tests (testNode):
  `Total for virtio_media device /dev/video0: 54, Succeeded: 54, Failed: 0, Warnings: 0`
  (`Total for device /dev/video0: ...` when the node reported no driver name; ` (using
  libv4l2)` after the device with -w). -s, -f, -a and --stream-from add tests to that one line;
- with -m /dev/mediaN (the media device and every node of its topology): the media node's
  `Total for ...` line, one per entity's node, then after an empty line
  `Grand Total for virtio_media device /dev/media0: 90, Succeeded: 90, Failed: 0, Warnings: 0`,
  the sum of all of them;
- `\\t\\tfail: FILE(LINE): message` and `\\t\\twarn: FILE(LINE): message` (FILE is __FILE__ in
  1.22.1, __FILE_NAME__ in 1.32, both the bare file name in Debian's builds); each test's
  `\\ttest NAME: OK`, `OK (Not Supported)` or `FAIL`. Streaming progress (`\\r\\tVideo
  Capture: Frame #012 (select)`) shares lines with them through carriage returns; with
  `-C always` the words are coloured with ANSI escapes. Failed = Total - Succeeded; a warning
  does not fail a test, and is counted even when -n hides its line.
"""
from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-compliance.sh"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SUMMARY = re.compile(
    r"^(?P<grand>Grand )?Total for (?:(?P<driver>.+?) )?device (?P<device>\S+?)"
    r"(?P<libv4l2> \(using libv4l2\))?: (?P<total>\d+), Succeeded: (?P<succeeded>\d+), "
    r"Failed: (?P<failed>\d+), Warnings: (?P<warnings>\d+)\s*$")
_VERSION = re.compile(r"^v4l2-compliance (?P<version>[0-9][^\s,]*), \d+ bits")
_FAIL_WARN = re.compile(r"\b(fail|warn): ")
_FAILED_TEST = re.compile(r"^\s*(.*\S): FAIL\s*$")
_COUNTS = ("total", "succeeded", "failed", "warnings")


class NoSummary(AssertionError):
    """The output has no `Total for ...` line: v4l2-compliance did not run to the end (it
    could not open the device, -E stopped it, it crashed, the guest timed out)."""


def _segments(output: str):
    """The output's visible line pieces: colours removed, split at newlines and at the carriage
    returns the streaming progress uses."""
    for line in _ANSI.sub("", output).split("\n"):
        for seg in line.split("\r"):
            if seg.strip():
                yield seg


def parse(output: str) -> dict:
    """The summary of one v4l2-compliance run's output (stdout, or stdout+stderr).

    Returns a dict: `total`, `succeeded`, `failed`, `warnings` (ints), `version` (the header's,
    e.g. "1.32.0"; None without a header), and in detail `nodes` (one dict per `Total for`
    line: driver, device, libv4l2 and the four counts), `grand` (True when the counts come
    from a `Grand Total` line), `fails`/`warns` (the `fail:`/`warn:` lines, from the word on)
    and `failed_tests` (the `test NAME: FAIL` lines and other results that say FAIL).

    The counts are the last `Grand Total` line's if there is one (-m), else the sum of the
    `Total for` lines (one per node; several only if the output holds several runs). Raises
    NoSummary (an AssertionError) when there is no summary line at all.
    """
    nodes, grands = [], []
    fails, warns, failed_tests = [], [], []
    version = None
    for seg in _segments(output):
        if version is None and (m := _VERSION.match(seg)):
            version = m["version"]
            continue
        if m := _SUMMARY.match(seg):
            counts = {k: int(m[k]) for k in _COUNTS}
            if m["grand"]:
                grands.append(counts)
            else:
                nodes.append({"driver": m["driver"], "device": m["device"],
                              "libv4l2": bool(m["libv4l2"]), **counts})
            continue
        if m := _FAIL_WARN.search(seg):
            (fails if m[1] == "fail" else warns).append(seg[m.start():].rstrip())
        elif m := _FAILED_TEST.match(seg):
            failed_tests.append(m[1] + ": FAIL")
    if not nodes and not grands:
        raise NoSummary("no v4l2-compliance summary line ('Total for ... device ...: N, "
                        "Succeeded: ...') in the output; its end:\n" + _tail(output))
    if grands:
        counts = grands[-1]
    else:
        counts = {k: sum(n[k] for n in nodes) for k in _COUNTS}
    return {**counts, "version": version, "nodes": nodes, "grand": bool(grands),
            "fails": fails, "warns": warns, "failed_tests": failed_tests}


def _tail(output: str, n: int = 3000) -> str:
    out = _ANSI.sub("", output).replace("\r", "\n")
    return out[-n:] if len(out) > n else out


def assert_clean(output: str, expected_total: int, version: str | None = None) -> dict:
    """Asserts that the run ended with 0 failed, 0 warnings and exactly `expected_total`
    tests (and, given `version` such as "1.32", that the header's version starts with it).
    The message lists the run's fail:, warn: and FAIL lines. Returns parse(output)."""
    r = parse(output)
    problems = []
    if r["failed"]:
        problems.append(f"{r['failed']} failed")
    if r["warnings"]:
        problems.append(f"{r['warnings']} warnings")
    if r["total"] != expected_total:
        problems.append(f"total {r['total']}, expected {expected_total}")
    if r["succeeded"] + r["failed"] != r["total"]:
        problems.append("succeeded + failed != total")
    if version is not None and not (r["version"] or "").startswith(version):
        problems.append(f"v4l2-compliance {r['version']} ran, expected {version}")
    if problems:
        msg = [f"v4l2-compliance {r['version']}: " + ", ".join(problems) +
               f" (Total {r['total']}, Succeeded {r['succeeded']}, Failed {r['failed']}, "
               f"Warnings {r['warnings']})"]
        for title, key in (("fail", "fails"), ("warn", "warns"), ("FAIL", "failed_tests")):
            if r[key]:
                msg.append(f"--- {title} lines ---")
                msg.extend(r[key])
        if r["warnings"] and not r["warns"]:
            msg.append("(warnings counted but not printed: was -n given?)")
        if not (r["fails"] or r["warns"] or r["failed_tests"]):
            msg.append("--- end of the output ---\n" + _tail(output))
        raise AssertionError("\n".join(msg))
    return r


@functools.lru_cache(maxsize=None)
def wrapper_path() -> Path:
    """The v4l2-compliance 1.32 wrapper (a shell script), built or found in the cache by
    scripts/build-compliance.sh (idempotent; a cold run downloads Debian sid's packages, a few
    seconds). Raises RuntimeError with the script's log if it fails."""
    p = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, check=False)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (status {p.returncode}):\n{p.stderr}")
    path = Path(lines[-1])
    if not path.is_file():
        raise RuntimeError(f"{BUILD_SCRIPT} printed {path}, which is not a file:\n{p.stderr}")
    return path
