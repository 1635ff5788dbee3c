"""Is the process that started a run still there? (pid + its start time, on this host)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_STARTS: dict[
    int, int | None
] = {}  # pid -> its start in ticks after boot (a forked child has its own)


def process_gone(host: str | None, pid: int | None, ticks: int | None = None) -> bool:
    """Whether the process ``pid`` on ``host`` (started at ``ticks`` after boot) has ended.

    False when that cannot be known here (another host, no pid, Windows). A pid now held by a
    process that started at other ``ticks`` was reused: the run's process is gone.
    """
    if not pid or host != socket.gethostname() or os.name == "nt":
        return False  # on Windows os.kill would terminate the process, not probe it
    pid = int(pid)
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # alive, another user's
    state, now = _proc_stat(pid)
    if state in ("Z", "X"):  # a killed child its parent has not reaped yet
        return True
    return ticks is not None and now is not None and int(ticks) != now


def own_start() -> int | None:
    """This process's start, in clock ticks after boot (None where /proc does not say)."""
    pid = os.getpid()
    if pid not in _STARTS:
        _STARTS[pid] = _proc_stat(pid)[1]
    return _STARTS[pid]


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """(state, start time in clock ticks after boot) from /proc; (None, None) where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None, None
