"""Hold TCP ports with idle listeners until killed: CI's proof that the tests are hermetic.

    holder=$(python scripts/hold_ports.py --owner $$ 9108 8333)   # returns once they are held
    ...
    kill "$holder"

.ci/run holds the product's well-known ports (9108: metrics, 8333: SeaweedFS's default S3 port)
for the whole test run, so a test that binds a fixed port, or assumes one is free, fails in CI
instead of on the one machine where something else happens to listen there. A port that another
program already holds is taken either way: it is reported and skipped. Once every port is
bound, a child process keeps the sockets until SIGTERM, or until the ``--owner`` process is gone
(so a CI run killed outright leaves no listener behind); the command prints the child's pid on
stdout and a ``holding ports`` line on stderr, and returns.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time

#: Seconds between checks that the owner process is still alive.
OWNER_POLL_S = 1.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def main(argv: list[str]) -> int:
    owner = None
    if argv[:1] == ["--owner"] and len(argv) > 1:
        owner, argv = int(argv[1]), argv[2:]
    if not argv:
        print("usage: hold_ports.py [--owner PID] PORT...", file=sys.stderr)
        return 2
    held, busy = [], []
    for port in (int(p) for p in argv):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("0.0.0.0", port))  # every interface: what the worker's default host binds
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            sock.close()
            busy.append(port)
            continue
        sock.listen()
        held.append(sock)
    ports = [s.getsockname()[1] for s in held]
    print(f"holding ports {ports}" + (f" (already taken by another program: {busy})" if busy else ""),
          file=sys.stderr, flush=True)
    child = os.fork()
    if child:
        print(child, flush=True)
        return 0
    # The child: detach from the caller's output, so `$(...)` returns, and keep the sockets.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while owner is None or _alive(owner):
        time.sleep(OWNER_POLL_S)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
