"""Regenerate ``tests/data/ketama_golden.json``: key placement by the real ketama programs.

Usage::

    python bench/ketama_golden.py [--out PATH] [--program twemproxy|libmemcached]

Needs the ``memcached`` and ``nutcracker`` (twemproxy) binaries on PATH and
``pylibmc`` installed (``pip install -e '.[bench]'``).

For every case this starts one real memcached process per server on
loopback, stores every key through the program under test, then asks each
memcached directly which one holds the key. No placement is computed here:
the owners recorded in the JSON are what the programs did.

``twemproxy``
    ``nutcracker`` with ``distribution: ketama`` and ``hash: md5``, servers
    written as ``host:port:weight`` (or ``host:port:weight name``); keys are
    set through the proxy with pymemcache.
``libmemcached``
    ``pylibmc.Client(servers, behaviors={"ketama_weighted": True})``, which
    selects libmemcached's weighted ketama with MD5 for both the continuum
    and the keys. pylibmc takes the weight from ``"host:port:weight"``
    strings and hands it to ``memcached_server_add_with_weight``.

Ports are picked at run time, and ketama hashes ``host:port`` into the
continuum (the bare host on port 11211, or the explicit name when there is
one), so every case records the exact server specs the program saw. The
test rebuilds ``HashRing(servers, hash="ketama")`` from those same specs.

JSON layout::

    {"generated_by": "python bench/ketama_golden.py",
     "cases": [{"name": ..., "program": "twemproxy" | "libmemcached",
                "version": ..., "servers": ["127.0.0.1:40001:1", ...],
                "keys": [...], "owners": [index into servers, ...]}]}

A key is a JSON string (hashed and sent as its UTF-8 bytes) or, for keys
that are not valid UTF-8, ``{"hex": "<bytes as hex>"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pylibmc
from pymemcache.client.base import Client as PymemcacheClient

from memring.tools.local import MemcachedProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "ketama_golden.json"
GENERATED_BY = "python bench/ketama_golden.py"

PROGRAMS = ("twemproxy", "libmemcached")

#: ``session:<n>`` keys per case, plus this many random unicode and bytes keys each.
SESSION_KEYS = 2000
RANDOM_KEYS = 100
SEED = 20240611

#: ketama leaves the port out of a point name when it is 11211.
DEFAULT_PORT = 11211

Key = str | bytes


@dataclass(frozen=True)
class Case:
    name: str
    weights: tuple[int, ...]
    #: The last server listens on port 11211 of another loopback address.
    default_port_last: bool = False
    #: Give every server an explicit twemproxy name (``host:port:weight name``).
    named: bool = False

    @property
    def programs(self) -> tuple[str, ...]:
        # libmemcached has no server names; that case is twemproxy's alone.
        return ("twemproxy",) if self.named else PROGRAMS


CASES = (
    Case("3-equal", (1, 1, 1)),
    Case("4-equal", (1, 1, 1, 1)),
    # 25 equal servers: float32(1/25) * 160 / 4 * 25 = 39.99999 -> 156 points, not 160.
    Case("25-equal", (1,) * 25),
    Case("weights-1-2-3-5", (1, 2, 3, 5)),
    Case("default-port-11211", (1, 2, 1), default_port_last=True),
    Case("named", (1, 1, 2, 1), named=True),
)


# -- keys ------------------------------------------------------------------

# Code point ranges for random unicode keys: printable ASCII, Latin-1, Greek,
# Cyrillic, CJK and emoji. None of them holds whitespace or control characters,
# which the memcached text protocol cannot carry in a key.
_UNICODE_RANGES = (
    (0x21, 0x7E),
    (0xA1, 0xFF),
    (0x391, 0x3C9),
    (0x410, 0x44F),
    (0x4E00, 0x9FFF),
    (0x1F600, 0x1F64F),
)
# Bytes allowed in a raw key: printable ASCII and everything >= 0x80.
_KEY_BYTES = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])


def _random_unicode_key(rng: random.Random) -> str:
    chars = []
    for _ in range(rng.randint(1, 40)):
        lo, hi = rng.choice(_UNICODE_RANGES)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def _random_bytes_key(rng: random.Random) -> bytes:
    """Random key bytes that are deliberately not valid UTF-8."""
    while True:
        key = bytes(rng.choice(_KEY_BYTES) for _ in range(rng.randint(1, 60)))
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            return key


def make_keys(seed: int) -> list[Key]:
    rng = random.Random(seed)
    keys: list[Key] = [f"session:{n}" for n in range(SESSION_KEYS)]
    seen = {k.encode() for k in keys if isinstance(k, str)}
    for make in (_random_unicode_key, _random_bytes_key):
        added = 0
        while added < RANDOM_KEYS:
            key: Key = make(rng)
            raw = key.encode() if isinstance(key, str) else key
            if raw in seen or len(raw) > 250:
                continue
            seen.add(raw)
            keys.append(key)
            added += 1
    return keys


def wire(key: Key) -> bytes:
    """The bytes sent (and hashed) for ``key``: UTF-8 for str, as-is for bytes."""
    return key.encode("utf-8") if isinstance(key, str) else key


def key_to_json(key: Key) -> str | dict[str, str]:
    return key if isinstance(key, str) else {"hex": key.hex()}


# -- servers ---------------------------------------------------------------


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def default_port_host() -> str:
    """A loopback address other than 127.0.0.1 whose port 11211 is free."""
    for last in range(2, 20):
        host = f"127.0.0.{last}"
        if _port_is_free(host, DEFAULT_PORT):
            return host
    raise SystemExit("no loopback address 127.0.0.2..19 has port 11211 free")


def start_servers(stack: ExitStack, case: Case) -> list[MemcachedProcess]:
    """Start one memcached per server of ``case``; each is killed by PID when ``stack`` closes."""
    procs: list[MemcachedProcess] = []
    for i in range(len(case.weights)):
        last = case.default_port_last and i == len(case.weights) - 1
        proc = (
            MemcachedProcess(host=default_port_host(), port=DEFAULT_PORT, memory_mb=16)
            if last
            else MemcachedProcess(memory_mb=16)
        )
        stack.callback(proc.kill)  # kill() is idempotent and safe before start()
        procs.append(proc.start())
    return procs


def server_specs(case: Case, procs: Sequence[MemcachedProcess]) -> list[str]:
    """The specs as the program saw them: ``host:port:weight``, plus `` name`` if named."""
    specs = []
    for i, (proc, weight) in enumerate(zip(procs, case.weights, strict=True)):
        spec = f"{proc.host}:{proc.port}:{weight}"
        if case.named:
            spec += f" cache-{chr(ord('a') + i)}"
        specs.append(spec)
    return specs


def find_owners(procs: Sequence[MemcachedProcess], keys: Sequence[Key]) -> list[int]:
    """Ask every memcached directly which one holds each key; each must be on exactly one."""
    raw = [wire(k) for k in keys]
    expected = {r: str(i).encode() for i, r in enumerate(raw)}
    owners: dict[bytes, int] = {}
    for index, proc in enumerate(procs):
        client = PymemcacheClient(proc.address, connect_timeout=2, timeout=5)
        try:
            for start in range(0, len(raw), 200):
                found = client.get_many(raw[start : start + 200])
                for key, value in found.items():
                    if value != expected[key]:
                        raise RuntimeError(f"{key!r} on {proc.address} holds {value!r}")
                    if key in owners:
                        raise RuntimeError(f"{key!r} is on servers {owners[key]} and {index}")
                    owners[key] = index
        finally:
            client.close()
    missing = [r for r in raw if r not in owners]
    if missing:
        raise RuntimeError(f"{len(missing)} keys are on no server, e.g. {missing[:3]!r}")
    return [owners[r] for r in raw]


# -- programs --------------------------------------------------------------


def nutcracker_version() -> str:
    out = subprocess.run(["nutcracker", "-V"], capture_output=True, text=True, check=True)
    text = (out.stdout + out.stderr).strip()
    return text.removeprefix("This is ").splitlines()[0]


def _nutcracker_config(listen_port: int, specs: Sequence[str]) -> str:
    lines = [
        "golden:",
        f"  listen: 127.0.0.1:{listen_port}",
        "  hash: md5",
        "  distribution: ketama",
        "  auto_eject_hosts: false",
        "  preconnect: true",
        "  timeout: 2000",
        "  servers:",
        *(f"    - {spec}" for spec in specs),
    ]
    return "\n".join(lines) + "\n"


def _wait_for_port(
    proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nutcracker exited ({proc.returncode}):\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nutcracker did not listen on {port} in {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def nutcracker(specs: Sequence[str]) -> Iterator[int]:
    """Run nutcracker in front of ``specs``; yields its listen port, SIGKILLs it by PID on exit."""
    with tempfile.TemporaryDirectory(prefix="ketama-golden-") as tmp:
        conf = Path(tmp) / "nutcracker.yml"
        log = Path(tmp) / "nutcracker.log"
        port = free_port()
        conf.write_text(_nutcracker_config(port, specs))
        check = subprocess.run(
            ["nutcracker", "-t", "-c", str(conf)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nutcracker rejected the config:\n{check.stderr}{check.stdout}")
        argv = [
            "nutcracker",
            "-c",
            str(conf),
            "-o",
            str(log),
            "-a",
            "127.0.0.1",
            "-s",
            str(free_port()),
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            _wait_for_port(proc, port, log)
            yield port
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def place_twemproxy(specs: Sequence[str], keys: Sequence[Key]) -> None:
    with nutcracker(specs) as port:
        client = PymemcacheClient(("127.0.0.1", port), connect_timeout=2, timeout=5)
        try:
            for start in range(0, len(keys), 200):
                batch = {
                    wire(k): str(start + i).encode()
                    for i, k in enumerate(keys[start : start + 200])
                }
                failed = client.set_many(batch, noreply=False)
                if failed:
                    raise RuntimeError(
                        f"twemproxy failed to store {len(failed)} keys: {failed[:3]!r}"
                    )
        finally:
            client.close()


def place_libmemcached(specs: Sequence[str], keys: Sequence[Key]) -> None:
    client = pylibmc.Client(list(specs), behaviors={"ketama_weighted": True})
    try:
        for i, key in enumerate(keys):
            if not client.set(wire(key), str(i).encode()):
                raise RuntimeError(f"libmemcached failed to store {key!r}")
    finally:
        client.disconnect_all()


PLACERS: dict[str, Callable[[Sequence[str], Sequence[Key]], None]] = {
    "twemproxy": place_twemproxy,
    "libmemcached": place_libmemcached,
}


def program_version(program: str) -> str:
    if program == "twemproxy":
        return nutcracker_version()
    return f"libmemcached {pylibmc.libmemcached_version} (pylibmc {pylibmc.__version__})"


def run_case(case: Case, program: str, keys: Sequence[Key]) -> dict[str, Any]:
    with ExitStack() as stack:
        procs = start_servers(stack, case)
        specs = server_specs(case, procs)
        PLACERS[program](specs, keys)
        owners = find_owners(procs, keys)
    return {
        "name": case.name,
        "program": program,
        "version": program_version(program),
        "servers": specs,
        "keys": [key_to_json(k) for k in keys],
        "owners": owners,
    }


def write_json(path: Path, cases: Sequence[dict[str, Any]]) -> None:
    """One case per line, so a regenerated file diffs case by case."""
    body = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'{{"generated_by":{json.dumps(GENERATED_BY)},"cases":[\n{body}\n]}}\n', encoding="utf-8"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument(
        "--program",
        choices=PROGRAMS,
        action="append",
        help="only this program (repeatable); default: both",
    )
    args = parser.parse_args(argv)
    programs = args.program or list(PROGRAMS)

    keys = make_keys(SEED)
    results = []
    for case in CASES:
        for program in case.programs:
            if program not in programs:
                continue
            t0 = time.monotonic()
            result = run_case(case, program, keys)
            results.append(result)
            counts = [result["owners"].count(i) for i in range(len(result["servers"]))]
            print(
                f"{program:13} {case.name:20} {len(keys)} keys  per server {counts}  "
                f"({time.monotonic() - t0:.1f}s)",
                flush=True,
            )
    write_json(args.out, results)
    size = os.path.getsize(args.out)
    try:
        shown = args.out.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = args.out
    print(f"wrote {len(results)} cases to {shown} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
