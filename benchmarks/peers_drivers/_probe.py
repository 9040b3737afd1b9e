"""What the no-op tasks of every system call: standard library only, cheap, the same for all.

``mark()`` counts a no-op run in this process. The first call writes ``first-<pid>``
(the wall-clock time the first task started) into $PEERS_PROBE_DIR and starts a thread that
overwrites ``count-<pid>`` (runs so far) in place every 10 ms while the count moves: one
pwrite of the number twice, a few microseconds (open + write + rename cost 200 µs of CPU, 2%
of a core at this rate). The orchestrator times a drain from the earliest ``first-*`` and
reads the counts to know when every run has executed (Celery has no completion record; the
Postgres queues' is checked as well); a count whose two copies differ was read mid-write and
is read again on the next poll.

``stamp()`` sends the wall-clock time the task started, as a datagram, to the unix socket
$PEERS_PROBE_SOCKET where the benchmark client waits: enqueue→start latency.
"""

from __future__ import annotations

import os
import socket
import threading
import time

FLUSH_INTERVAL_S = 0.01

_lock = threading.Lock()
_count = 0
_started = False
_socket: socket.socket | None = None


def mark() -> None:
    global _count
    with _lock:
        _count += 1
        first = not _started
    if first:
        _start()


def stamp() -> None:
    global _socket
    started = time.time()
    if _socket is None:
        _socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        _socket.sendto(repr(started).encode(), os.environ["PEERS_PROBE_SOCKET"])
    except OSError:
        pass  # nobody listening (a stray stamp after the client left): not our business


def _start() -> None:
    global _started
    with _lock:
        if _started:
            return
        _started = True
    _write(f"first-{os.getpid()}", repr(time.time()))
    threading.Thread(target=_flush_forever, name="peers-probe", daemon=True).start()


def _flush_forever() -> None:
    folder = os.environ.get("PEERS_PROBE_DIR")
    if not folder:
        return
    fd = os.open(os.path.join(folder, f"count-{os.getpid()}"), os.O_RDWR | os.O_CREAT, 0o644)
    written = -1
    while True:
        time.sleep(FLUSH_INTERVAL_S)
        count = _count
        if count != written:
            os.pwrite(fd, f"{count:012d} {count:012d}\n".encode(), 0)
            written = count


def read_count(text: str) -> int | None:
    """The count in a ``count-*`` file, or None when it was caught mid-write."""
    parts = text.split()
    return int(parts[0]) if len(parts) == 2 and parts[0] == parts[1] else None


def _write(name: str, text: str) -> None:
    folder = os.environ.get("PEERS_PROBE_DIR")
    if not folder:
        return
    tmp = os.path.join(folder, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(folder, name))
