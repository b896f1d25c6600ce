"""Child processes: stopped with their whole group, and never left behind by a dead parent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

from common.processes import ChildProcess

PARENT = """
import sys, time
from pathlib import Path
from common.processes import ChildProcess
child = ChildProcess(Path(sys.argv[1]))
child.spawn([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_stop_ends_the_child_and_its_grandchildren(tmp_path: Path) -> None:
    child = ChildProcess(tmp_path / "child.log")
    child.spawn([sys.executable, "-c", "import subprocess, sys, time; "
                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                 "print('started', flush=True); time.sleep(600)"])
    deadline = time.monotonic() + 30
    while "started" not in child.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    family = [child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))]
    assert len(family) == 2
    child.stop(timeout=5)
    assert not child.running and all(gone(pid, 5) for pid in family)


def test_a_child_does_not_outlive_a_parent_killed_with_sigkill(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.log")],
                              stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert psutil.pid_exists(child_pid)
    parent.kill()  # no chance to stop its child
    parent.wait(10)
    assert gone(child_pid, 10), "the child outlived its parent"


def test_a_child_given_cpus_runs_on_them_and_so_do_the_processes_it_starts(tmp_path: Path) -> None:
    child = ChildProcess(tmp_path / "child.log")
    child.spawn([sys.executable, "-c", "import subprocess, sys, time; "
                 "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                 "print('started', flush=True); time.sleep(600)"], cpus=frozenset({0}))
    try:
        deadline = time.monotonic() + 30
        while "started" not in child.log_tail() and time.monotonic() < deadline:
            time.sleep(0.05)
        parent = psutil.Process(child.pid)
        grandchild = parent.children()[0]
        assert parent.cpu_affinity() == [0]
        assert grandchild.cpu_affinity() == [0]
    finally:
        child.stop()
