"""This process's stable name as a member of consumer groups.

A member that comes back under the name it had before a crash takes back at
once what it held (the broker can tell its messages are no one else's), so a
restarted process does not wait a whole lease for them. The name must be the
same after a restart and never held by two live processes at once:

- ``MILLSTREAM_MEMBER`` (the ``member`` setting) when given, say a pod name;
  the workers of ``millstream run --workers N`` each add a slot to it;
- otherwise the host name plus the lowest *slot* number that no other live
  process on this host holds. A slot is an exclusive ``flock`` on a file
  under the temporary directory; the kernel lets go of it when the process
  dies, however it dies, so a restarted process gets the slot (and the name)
  it had, while processes running side by side get distinct ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import tempfile
from pathlib import Path

__all__ = ["MemberName", "claim_member", "claim_slot", "member_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MOST_SLOTS = 4096


def member_name(*parts: str) -> str:
    """``parts`` joined by dots, with anything outside ``[A-Za-z0-9_.-]`` made a dash."""
    return ".".join(_UNSAFE.sub("-", part).strip("-") or "x" for part in parts)[:200]


class MemberName:
    """A claimed member name; ``release`` gives its slot back (also safe twice)."""

    def __init__(self, name: str, lock: int | None = None) -> None:
        self.name = name
        self._lock = lock

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing the descriptor drops the flock


def claim_member(configured: str | None, directory: Path | None = None) -> MemberName:
    """The configured name, or the host name with the lowest slot free on this host."""
    if configured:
        return MemberName(member_name(configured))
    return claim_slot(socket.gethostname(), directory)


def claim_slot(base: str, directory: Path | None = None) -> MemberName:
    """``base`` plus the lowest slot no other live process on this host holds, until released."""
    host = member_name(base)
    folder = directory or Path(tempfile.gettempdir()) / f"millstream-members-{os.getuid()}"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for slot in range(_MOST_SLOTS):
        fd = os.open(folder / f"{host}-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return MemberName(f"{host}-{slot}", fd)
    # Thousands of live processes on one host: fall back to a name of this process's own.
    return MemberName(f"{host}-pid{os.getpid()}")
