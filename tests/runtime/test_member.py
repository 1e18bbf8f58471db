"""A process's member name: stable across a restart, never shared by two live processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from millstream.runtime.member import claim_member, member_name

CHILD = """
import sys, time
from pathlib import Path
from millstream.runtime.member import claim_member
held = claim_member(None, Path(sys.argv[1]))
print(held.name, flush=True)
time.sleep(60)
"""


def test_processes_side_by_side_get_distinct_names_and_a_restart_gets_its_own_back(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        theirs = child.stdout.readline().strip()
        ours = claim_member(None, tmp_path)
        assert ours.name != theirs  # both alive: never one name for two

        child.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel lets go of the lock
        child.wait(timeout=10)
        restarted = claim_member(None, tmp_path)
        assert restarted.name == theirs  # the same slot, so the same name, comes back
        restarted.release()
        ours.release()
        assert claim_member(None, tmp_path).name == min(theirs, ours.name)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_configured_member_is_used_as_it_is_made_safe() -> None:
    assert claim_member("orders-7f9c/blue", None).name == "orders-7f9c-blue"
    assert member_name("web 1", "charge") == "web-1.charge"
