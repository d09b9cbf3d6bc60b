#!/usr/bin/env python3
"""failing.py SCRIPT [ARGS...]: runs the Python program SCRIPT with allocation-failure
injection on for this process and every task it forks or starts
(`/proc/self/make-it-fail` = 1: the task-filter of failslab/fail_page_alloc, see
Documentation/fault-injection/fault-injection.rst). It is switched on only once this
interpreter has started and imported what it needs, so that the exec of the program itself
does not fail; the job sets the probability (tests/test_fuzz.py, inject()).
"""
import runpy
import sys

if len(sys.argv) < 2:
    sys.exit(__doc__)
script = sys.argv[1]
sys.argv = sys.argv[1:]
with open("/proc/self/make-it-fail", "w") as f:
    f.write("1")
runpy.run_path(script, run_name="__main__")
