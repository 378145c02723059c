"""The connection pool looks at an idle connection before reusing it: bytes its
server sent unasked would be read as the next call's reply."""

from __future__ import annotations

import socket
import time
from typing import Any

from memring.client.transport import STRAY_CHECK_AFTER, ConnectionPool


class _Conn:
    """What the pool needs of a connection: a socket, and close()."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: Any = sock
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _pool() -> tuple[ConnectionPool, list[tuple[_Conn, socket.socket]]]:
    made: list[tuple[_Conn, socket.socket]] = []

    def make() -> Any:
        ours, theirs = socket.socketpair()
        conn = _Conn(ours)
        made.append((conn, theirs))
        return conn

    return ConnectionPool(make), made


def test_an_idle_connection_with_unasked_bytes_is_closed_not_reused() -> None:
    pool, made = _pool()
    conn = pool.get()
    pool.release(conn)
    made[0][1].sendall(b"END\r\n")  # the "server" answers again, unasked
    time.sleep(STRAY_CHECK_AFTER * 5)
    again = pool.get()
    assert again is not conn and conn.closed
    assert len(pool) == 1
    for _, theirs in made:
        theirs.close()
    pool.release(again)
    pool.clear()


def test_a_quiet_idle_connection_and_a_busy_one_are_reused() -> None:
    pool, made = _pool()
    conn = pool.get()
    pool.release(conn)
    time.sleep(STRAY_CHECK_AFTER * 5)
    assert pool.get() is conn  # looked at: nothing there
    pool.release(conn)
    assert pool.get() is conn  # back to back: not looked at
    made[0][1].close()  # the server closed it: found on use, not here
    pool.release(conn)
    time.sleep(STRAY_CHECK_AFTER * 5)
    assert pool.get() is conn and not conn.closed
    pool.release(conn)
    pool.clear()
