"""Hold TCP ports with idle listeners until killed: CI's proof that the tests are hermetic.

    holder=$(python scripts/hold_ports.py 9108 8333)   # returns once they are held
    ...
    kill "$holder"

.ci/run holds the product's well-known ports (9108: metrics, 8333: SeaweedFS's default S3 port)
for the whole test run, so a test that binds a fixed port, or assumes one is free, fails in CI
instead of on the one machine where something else happens to listen there. A port that another
program already holds is taken either way: it is reported and skipped. Once every port is
bound, a child process keeps the sockets and sleeps until SIGTERM; the command prints the child's
pid on stdout and a ``holding ports`` line on stderr, and returns.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: hold_ports.py PORT...", file=sys.stderr)
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
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
