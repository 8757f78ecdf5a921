"""A store that accepts connections and never answers: a TCP listener that holds every connection
open without reading or writing a byte (a hung proxy, a firewall that swallows requests). The
client's connect succeeds at once and its read waits for its timeout."""

from __future__ import annotations

import socket
import threading


class BlackHole:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()
