"""memcached's text protocol: request builders and sans-I/O reply parsers.

Both transports (threads: :mod:`memring.client.transport`; asyncio:
:mod:`memring.aio.transport`) write the requests built here and hand the
bytes they read to the parsers here, so the wire format exists once.

Every command memring sends is one entry of :data:`COMMANDS`: a
:class:`Command` whose ``build(*args)`` makes the request bytes and whose
``parse(buf, start, args, limit)`` reads its reply from ``buf[start:]``:

* complete: ``(result, end)``, ``end`` the offset just past the reply;
* incomplete: ``(INCOMPLETE, need)``, ``need`` the least total length
  ``buf`` must reach before it is worth parsing again;
* broken: raises :class:`ErrorLine` (the server answered ``ERROR``,
  ``CLIENT_ERROR ...`` or ``SERVER_ERROR ...``) or :class:`BadReply` (bytes
  that are not a reply to this request: the connection is out of step).

``limit`` is the largest value a reply may carry: a ``VALUE`` header that
claims more is refused at once, before any byte of it is buffered, so a
lying server costs no memory.

Keys reach this layer already checked by :func:`memring.engine.keys.encode_key`
(no whitespace or control characters, at most 250 bytes).
"""

from memring.protocol.commands import COMMANDS, Command, batch_parser, build_batch
from memring.protocol.replies import INCOMPLETE, BadReply, ErrorLine, MetadumpReader, Parser

__all__ = [
    "COMMANDS", "INCOMPLETE", "BadReply", "Command", "ErrorLine", "MetadumpReader", "Parser",
    "batch_parser", "build_batch",
]
