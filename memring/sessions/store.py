"""Sessions in memcached: create, load (with sliding expiry), save, delete, regenerate.

A session is stored under ``key_prefix + id`` as one JSON text::

    {"v": 1, "created_at": 1700000000.0, "last_accessed": 1700000100.0, "data": {...}}

The store does the JSON itself and hands the client a ``str``, so no
pickle is involved whatever serde the client was built with; a record
that is not such a JSON object reads as a missing session.

The store's logic is written once, as generators of client calls
(:data:`Steps`, as the engine's operations are): :class:`SessionStore`
makes each call on a thread-face client, :class:`AsyncSessionStore`
awaits it on an asyncio client.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any, Protocol, TypeVar

from memring.engine.keys import encode_key
from memring.errors import ConfigError, InvalidKey, MemringError, SerializationError
from memring.sessions.session import Session, is_valid_session_id, new_session_id

__all__ = ["DEFAULT_TTL", "AsyncSessionStore", "SessionBackend", "SessionNotFound",
           "SessionStore"]

T = TypeVar("T")
#: One client call: its method name, positional and keyword arguments.
Step = tuple[str, tuple[Any, ...], dict[str, Any]]
#: The store's logic: yields client calls, is sent their results, returns its own.
Steps = Generator[Step, Any, T]
_ACK = {"noreply": False}

log = logging.getLogger("memring.sessions")

#: Default idle timeout of a session, in seconds.
DEFAULT_TTL = 1800
#: memcached reads an expire over 30 days as a Unix time, not a duration.
MAX_TTL = 30 * 24 * 3600
#: Version of the stored record format.
RECORD_VERSION = 1
#: Attempts to find an unused id; a 256-bit collision never happens, so a
#: second failure means the backend is not acknowledging ``add``.
_CREATE_ATTEMPTS = 3


class SessionNotFound(MemringError, KeyError):
    """No live session has this id (never existed, expired, or deleted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "session not found"


class SessionBackend(Protocol):
    """The part of the pymemcache API a :class:`SessionStore` uses.

    :class:`memring.Client`, :class:`memring.BackupClient` and pymemcache's
    clients all have it.
    """

    def get(self, key: str, default: Any = None) -> Any: ...
    def add(self, key: str, value: Any, expire: int = 0, noreply: bool | None = None) -> bool: ...
    def replace(self, key: str, value: Any, expire: int = 0,
                noreply: bool | None = None) -> bool: ...
    def delete(self, key: str, noreply: bool | None = None) -> bool: ...
    def touch(self, key: str, expire: int = 0, noreply: bool | None = None) -> bool: ...


class _StoreLogic:
    """What both stores share: settings, and every operation as :data:`Steps`."""

    def __init__(
        self,
        client: Any,
        *,
        ttl: int = DEFAULT_TTL,
        sliding: bool = True,
        key_prefix: str = "session:",
        absolute_ttl: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name in ("get", "add", "replace", "delete", "touch"):
            if not callable(getattr(client, name, None)):
                raise ConfigError(f"client has no {name}() method; pass a memring.Client, "
                                  "memring.BackupClient or a pymemcache client")
        self.client = client
        self.ttl = _check_seconds("ttl", ttl, MAX_TTL)
        self.absolute_ttl = (None if absolute_ttl is None
                             else _check_seconds("absolute_ttl", absolute_ttl, None))
        self.sliding = bool(sliding)
        if not isinstance(key_prefix, str):
            raise ConfigError("key_prefix must be a str")
        try:  # the prefix with the longest id must make a valid key
            encode_key(key_prefix + "A" * 43)
        except InvalidKey as exc:
            raise ConfigError(f"key_prefix {key_prefix!r} can't form session keys: {exc}") from exc
        self.key_prefix = key_prefix
        self._clock = clock

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ttl={self.ttl}, sliding={self.sliding}, "
                f"absolute_ttl={self.absolute_ttl}, key_prefix={self.key_prefix!r})")

    def new(self, data: Mapping[str, Any] | None = None) -> Session:
        """A new session with a fresh id, not stored yet (:meth:`save` stores it)."""
        now = self._clock()
        session = Session(new_session_id(), dict(data or {}), created_at=now, last_accessed=now)
        if session:
            session.modified = True
        return session

    # -- the operations, as client calls ---------------------------------------
    def _create(self, data: Mapping[str, Any] | None) -> Steps[Session]:
        session = self.new(data)
        yield from self._save(session)
        return session

    def _load(self, sid: object) -> Steps[Session | None]:
        if not is_valid_session_id(sid):
            return None
        assert isinstance(sid, str)
        key = self._key(sid)
        record = _decode((yield ("get", (key,), {})), self.key_prefix)
        if record is None:
            return None
        created_at, data = record
        now = self._clock()
        expire = self._expire(created_at, now)
        if expire is None:
            yield ("delete", (key,), _ACK)
            return None
        if self.sliding and not (yield ("touch", (key, expire), _ACK)):
            return None  # deleted or expired since the get
        return Session(sid, data, created_at=created_at, last_accessed=now, is_new=False)

    def _save(self, session: Session) -> Steps[bool]:
        if not isinstance(session, Session):
            raise TypeError(f"save() needs a Session, got {type(session).__name__}")
        now = self._clock()
        expire = self._expire(session.created_at, now)
        if expire is None:  # its lifetime is over
            if not session.is_new:
                yield ("delete", (self._key(session.id),), _ACK)
            return False
        value = _encode(session)
        if session.is_new:
            for _ in range(_CREATE_ATTEMPTS):
                if (yield ("add", (self._key(session.id), value, expire), _ACK)):
                    session.is_new = session.modified = False
                    return True
                session._sid = new_session_id()  # taken: draw again
            raise MemringError(
                f"could not store a new session after {_CREATE_ATTEMPTS} attempts: the "
                "backend refuses add() (is it acknowledging writes?)")
        if not (yield ("replace", (self._key(session.id), value, expire), _ACK)):
            return False
        session.modified = False
        return True

    def _delete(self, sid: object) -> Steps[bool]:
        if not is_valid_session_id(sid):
            return False
        assert isinstance(sid, str)
        return bool((yield ("delete", (self._key(sid),), _ACK)))

    def _regenerate(self, session: Session | str) -> Steps[Session]:
        if isinstance(session, Session):
            old = session
        else:
            loaded = yield from self._load(session)
            if loaded is None:
                raise SessionNotFound("no live session with this id")
            old = loaded
        now = self._clock()
        fresh = Session(new_session_id(), dict(old.data), created_at=old.created_at,
                        last_accessed=now)
        if not (yield from self._save(fresh)):
            raise SessionNotFound("the session's lifetime is over")
        if not old.is_new:
            yield from self._delete(old.id)  # after the new one is stored: never without one
        old.invalidated = True
        return fresh

    # -- helpers -----------------------------------------------------------
    def _key(self, sid: str) -> str:
        return self.key_prefix + sid

    def _expire(self, created_at: float, now: float) -> int | None:
        """The expire to send now, or None if the session's lifetime is over."""
        left = float(self.ttl) if self.sliding else created_at + self.ttl - now
        if self.absolute_ttl is not None:
            left = min(left, created_at + self.absolute_ttl - now)
        if left <= 0:
            return None
        return min(self.ttl, math.ceil(left))


class SessionStore(_StoreLogic):
    """Server-side sessions on a memring client.

    >>> store = SessionStore(memring.Client(servers), ttl=1800)   # doctest: +SKIP
    >>> s = store.create({"user_id": 7})                            # doctest: +SKIP
    >>> store.load(s.id)["user_id"]                                 # doctest: +SKIP
    7

    client
        :class:`memring.Client`, :class:`memring.BackupClient` (a session
        survives losing any one node), or any client with the
        :class:`SessionBackend` methods.
    ttl
        Seconds (1 to 30 days). With ``sliding=True`` (the default) it is
        an idle timeout: every :meth:`load` touches the session, giving it
        ``ttl`` more seconds. With ``sliding=False`` the session ends
        ``ttl`` seconds after it was created, however it is used.
    absolute_ttl
        Optional hard limit in seconds since creation, also under sliding
        expiry: past it, the session is gone however active it is.
    key_prefix
        Prepended to the session id to form the memcached key.
    clock
        Returns the Unix time (injectable for tests).

    Session ids are checked for their exact format (43 URL-safe base64
    characters) before anything is sent: a forged or malformed id reads as
    no session and is never sent to memcached.

    Sessions live only in memcached: a session whose node is lost is gone
    (the user logs in again) unless the client is a
    :class:`~memring.BackupClient`.
    """

    client: SessionBackend

    def _run(self, steps: Steps[T]) -> T:
        """Make each client call of ``steps``; their result."""
        client = self.client
        try:
            method, args, kwargs = next(steps)
            while True:
                method, args, kwargs = steps.send(getattr(client, method)(*args, **kwargs))
        except StopIteration as stop:
            result: T = stop.value
            return result

    # -- public API --------------------------------------------------------
    def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """Store a new session holding ``data`` and return it.

        Raises :class:`~memring.SerializationError` if ``data`` is not
        JSON-able, and memring's node errors if it can't be stored.
        """
        return self._run(self._create(data))

    def load(self, sid: object) -> Session | None:
        """The session ``sid``, or None if it is malformed, unknown or expired.

        With ``sliding=True`` the session gets ``ttl`` more seconds (one
        ``touch``). The returned session's ``last_accessed`` is now; it is
        stored with the next :meth:`save`.
        """
        return self._run(self._load(sid))

    def save(self, session: Session) -> bool:
        """Store ``session``. True if stored.

        A new session is stored with ``add`` (never over another session).
        A loaded one is stored with ``replace``: a session deleted (say, a
        logout in another tab) or expired meanwhile is not brought back, and
        ``save`` returns False. Its expiry is set again: ``ttl`` seconds with
        sliding expiry, what is left of its lifetime without.
        """
        return self._run(self._save(session))

    def delete(self, sid: object) -> bool:
        """Delete session ``sid``. True if it existed; a malformed id is a no-op (False)."""
        return self._run(self._delete(sid))

    def regenerate(self, session: Session | str) -> Session:
        """The same data under a new id; the old id is deleted.

        Call it when the user's privileges change, above all at login, so
        that an id an attacker planted before the login (session fixation)
        is worthless after it. Takes a :class:`Session` (its current,
        possibly unsaved, data is carried over) or a session id (its stored
        data is). ``created_at`` is kept, so an ``absolute_ttl`` can't be
        dodged by regenerating. Raises :class:`SessionNotFound` if there is
        no such session or its lifetime is over.
        """
        return self._run(self._regenerate(session))


class AsyncSessionStore(_StoreLogic):
    """:class:`SessionStore` on an asyncio client (:class:`memring.AsyncClient`,
    :class:`memring.AsyncBackupClient`): the same options, records and rules,
    with ``async def`` methods.

    >>> store = AsyncSessionStore(memring.AsyncBackupClient(servers), ttl=1800)  # doctest: +SKIP
    >>> s = await store.create({"user_id": 7})                                    # doctest: +SKIP
    """

    async def _run(self, steps: Steps[T]) -> T:
        """Await each client call of ``steps``; their result."""
        client = self.client
        try:
            method, args, kwargs = next(steps)
            while True:
                got = await getattr(client, method)(*args, **kwargs)
                method, args, kwargs = steps.send(got)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def create(self, data: Mapping[str, Any] | None = None) -> Session:
        """:meth:`SessionStore.create`, awaited."""
        return await self._run(self._create(data))

    async def load(self, sid: object) -> Session | None:
        """:meth:`SessionStore.load`, awaited."""
        return await self._run(self._load(sid))

    async def save(self, session: Session) -> bool:
        """:meth:`SessionStore.save`, awaited."""
        return await self._run(self._save(session))

    async def delete(self, sid: object) -> bool:
        """:meth:`SessionStore.delete`, awaited."""
        return await self._run(self._delete(sid))

    async def regenerate(self, session: Session | str) -> Session:
        """:meth:`SessionStore.regenerate`, awaited."""
        return await self._run(self._regenerate(session))


def _check_seconds(name: str, value: object, limit: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (
            limit is not None and value > limit):
        bound = f" and at most {limit} (30 days)" if limit is not None else ""
        raise ConfigError(f"{name} must be an int of seconds, at least 1{bound}; got {value!r}")
    return value


def _encode(session: Session) -> str:
    record = {"v": RECORD_VERSION, "created_at": session.created_at,
              "last_accessed": session.last_accessed, "data": session.data}
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad = next((k for k, v in session.data.items() if not _jsonable(v)), None)
        where = f"attribute {bad!r}" if bad is not None else "the session"
        raise SerializationError(
            f"{where} is not JSON data (dict, list, str, int, float, bool, None): {exc}"
        ) from exc


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _decode(raw: object, prefix: str) -> tuple[float, dict[str, Any]] | None:
    """``(created_at, data)`` from a stored record; None if missing or malformed."""
    if raw is None:
        return None
    try:
        record = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except ValueError:
        record = None
    if (isinstance(record, dict) and record.get("v") == RECORD_VERSION
            and isinstance(record.get("data"), dict)
            and isinstance(record.get("created_at"), (int, float))
            and not isinstance(record.get("created_at"), bool)):
        return float(record["created_at"]), record["data"]
    log.warning("a value under %r* is not a session record; treated as no session", prefix)
    return None
