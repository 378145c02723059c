"""Local memcached processes on loopback, for the CLI's live mode, chaos runs and tests.

Every process is started on 127.0.0.1 on a port chosen at run time, and is
stopped by its own PID — never by name. :class:`LocalCluster` stops all its
processes on exit, including on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from types import TracebackType

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from memring.errors import MemringError
from memring.hashring.node import Node

__all__ = ["LocalCluster", "MemcachedNotFound", "MemcachedProcess", "find_memcached", "free_port"]

INSTALL_HINT = "install it with: apt-get install -y memcached"


class MemcachedNotFound(MemringError, FileNotFoundError):
    """No memcached binary on PATH."""


def find_memcached(binary: str | None = None) -> str:
    """Path of the memcached binary, or raise :class:`MemcachedNotFound` with the install hint."""
    path = shutil.which(binary or os.environ.get("MEMRING_MEMCACHED", "memcached"))
    if path is None:
        raise MemcachedNotFound(f"memcached binary not found; {INSTALL_HINT}")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _PortTaken(MemringError):
    """Another process holds the port memcached was to listen on."""


def _stats_pid(address: tuple[str, int] | str, tls_context: ssl.SSLContext | None = None
               ) -> int | None:
    """The PID that the server listening on ``address`` reports in ``stats``."""
    client = Client(address, connect_timeout=0.5, timeout=0.5, tls_context=tls_context)
    try:
        pid = client.stats().get(b"pid")
    finally:
        client.close()
    return int(pid) if pid is not None else None


def _wait_stopped(pid: int, timeout: float = 2.0) -> None:
    """Wait until every thread of ``pid`` is stopped (Linux ``/proc``; elsewhere, return)."""
    task_dir = f"/proc/{pid}/task"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = []
            for tid in os.listdir(task_dir):
                with open(f"{task_dir}/{tid}/stat", "rb") as f:
                    states.append(f.read().rsplit(b")", 1)[1].split()[0])
        except OSError:  # no /proc, or the process is gone
            return
        if all(state in (b"T", b"t") for state in states):
            return
        time.sleep(0.001)


class MemcachedProcess:
    """One memcached process on loopback.

    ``hang()``/``resume()`` send SIGSTOP/SIGCONT: the port stays open and
    connections are accepted by the kernel, but nothing is answered — the
    way a wedged or swapping server looks to a client.

    ``unix_socket`` (an absolute path) starts it on that unix-domain socket
    instead of a TCP port (memcached's ``-s``, which turns TCP off); its
    node is then ``unix:<path>``. The caller owns the path's directory.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        memory_mb: int = 64,
        threads: int = 2,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        unix_socket: str | None = None,
    ) -> None:
        if unix_socket is not None and not unix_socket.startswith("/"):
            raise ValueError(f"unix_socket must be an absolute path, got {unix_socket!r}")
        self.unix_socket = unix_socket
        self.binary = find_memcached(binary)
        self.host = host
        self.port = port or free_port(host)
        self._pick_port = port is None  # may move to another port until first started
        self.memory_mb = memory_mb
        self.threads = threads
        self.extra_args = list(extra_args)
        #: For a TLS-only server (``-Z``): how the readiness check connects.
        self.tls_context = tls_context
        self._proc: subprocess.Popen[bytes] | None = None
        self.hung = False

    @property
    def node(self) -> Node:
        return Node(self.unix_socket) if self.unix_socket else Node(self.host, self.port)

    @property
    def address(self) -> tuple[str, int] | str:
        """``(host, port)``, or the unix socket's path."""
        return self.unix_socket or (self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        where = (["-s", self.unix_socket, "-a", "0600"] if self.unix_socket
                 else ["-l", self.host, "-p", str(self.port)])
        argv = [
            self.binary, *where, "-U", "0",
            "-m", str(self.memory_mb), "-t", str(self.threads), "-c", "4096",
        ]
        if os.geteuid() == 0:
            argv += ["-u", "root"]
        return argv + self.extra_args

    def start(self, timeout: float = 5.0) -> MemcachedProcess:
        """Start the process and wait until it answers on its port.

        "Answers" means its own ``stats`` reports its PID: a port picked free
        a moment ago can be taken by another process meanwhile, and then our
        memcached exits while the other one answers. A port this object
        picked itself is then replaced by a new one (before the first start
        only: a restart keeps its port).
        """
        if self.running:
            return self
        for _ in range(5 if self._pick_port else 1):
            try:
                self._start_once(timeout)
                break
            except _PortTaken:
                self.port = free_port(self.host)
        else:
            raise MemringError(f"no free port for memcached on {self.host}")
        self._pick_port = False
        return self

    def _start_once(self, timeout: float) -> None:
        self._proc = proc = subprocess.Popen(
            self._argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.hung = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                self.kill()
                if self._pick_port and "in use" in err:
                    raise _PortTaken(err)
                raise MemringError(f"memcached on {self.node.label} exited: {err.strip()}")
            try:
                if _stats_pid(self.address, self.tls_context) == proc.pid:
                    return
            except (OSError, ValueError, MemcacheError):
                pass
            time.sleep(0.01)
        self.kill()
        raise MemringError(f"memcached on {self.node.label} did not start in {timeout}s")

    def kill(self) -> None:
        """SIGKILL the process (by PID) and reap it. Idempotent."""
        proc, self._proc = self._proc, None
        self.hung = False
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    stop = kill

    def hang(self) -> None:
        """SIGSTOP: the server stops answering but keeps its port and data.

        Returns once every thread of the process is stopped: the signal is
        asynchronous, and a busy machine can let a thread answer one more
        request after ``kill()`` has returned.
        """
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGSTOP)
            self.hung = True
            _wait_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT a hung server."""
        if self._proc is not None and self.running:
            self._proc.send_signal(signal.SIGCONT)
            self.hung = False

    def restart(self, timeout: float = 5.0) -> MemcachedProcess:
        """Kill and start again on the same port: the server comes back empty."""
        self.kill()
        return self.start(timeout)

    def __repr__(self) -> str:
        state = "hung" if self.hung else ("running" if self.running else "stopped")
        return f"<MemcachedProcess {self.node.label} pid={self.pid} {state}>"


class LocalCluster:
    """``n`` memcached processes on loopback, stopped by PID on exit.

    >>> with LocalCluster(3) as cluster:          # doctest: +SKIP
    ...     client = memring.Client(cluster.servers)
    """

    def __init__(self, n: int, **options: object) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        self.processes = [MemcachedProcess(**options) for _ in range(n)]  # type: ignore[arg-type]

    @property
    def servers(self) -> list[str]:
        return [p.node.label for p in self.processes]

    @property
    def nodes(self) -> list[Node]:
        return [p.node for p in self.processes]

    def __getitem__(self, i: int) -> MemcachedProcess:
        return self.processes[i]

    def __len__(self) -> int:
        return len(self.processes)

    def process_for(self, node: Node) -> MemcachedProcess:
        for p in self.processes:
            if p.address == node.address:
                return p
        raise KeyError(node.label)

    def start(self) -> LocalCluster:
        try:
            for p in self.processes:
                p.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.processes:
            if p.hung:
                p.resume()
            p.kill()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
