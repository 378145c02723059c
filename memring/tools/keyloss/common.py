"""What the keyloss modules share: the constants, the row type and the errors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memring.errors import MemringError

#: Placement modes, in the order ``all`` runs them.
MODES = ("ring", "modulo", "backup")
#: Output formats of :func:`format_rows`.
FORMATS = ("table", "json", "csv")
#: How many nodes may die at once.
KILL_CHOICES = (1, 2)
#: Keys per run when none is given.
DEFAULT_KEYS = 100_000
#: Largest simulated cluster (400 points per node are built in memory).
MAX_NODES = 1000
#: Largest live cluster (one memcached process per node).
MAX_LIVE_NODES = 64
#: The node-count limits, in the one wording the errors and ``--help`` use.
NODE_LIMITS = (
    f"from 2 to {MAX_LIVE_NODES} live (one memcached process per node) "
    f"or to {MAX_NODES} with --simulate"
)
#: How to get what :func:`plot_rows` needs.
PLOT_INSTALL_HINT = "pip install 'memring[plot]'"

#: ``progress(done, total)``: called now and then with the keys placed so far.
ProgressCallback = Callable[[int, int], None]
#: ``progress(done, total, phase)``: key writes and reads done so far in a live
#: run, and what it is doing now (``"4 nodes, ring: reading"``).
LiveProgressCallback = Callable[[int, int, str], None]


class KeylossError(MemringError):
    """A live measurement could not run, or its result could not be trusted.

    Raised when a server is unreachable, refuses writes, fails during the run
    or evicts keys: each would be counted as "lost" and overstate the loss.
    """


class PlotUnavailable(KeylossError, ImportError):
    """:func:`plot_rows` needs matplotlib, which is not installed."""



@dataclass(frozen=True)
class KeylossRow:
    """One measurement: ``killed`` of ``nodes`` nodes died under placement ``mode``.

    ``lost`` of ``keys`` keys miss afterwards (``lost_fraction`` = lost/keys);
    ``expected_fraction`` is the value theory predicts (see :mod:`memring.tools.keyloss`).
    """

    nodes: int
    killed: int
    mode: str
    keys: int
    lost: int
    lost_fraction: float
    expected_fraction: float

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict, keys in field order (the JSON/CSV schema)."""
        return dataclasses.asdict(self)


#: The row's field names, in order: the JSON keys and the CSV header.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(KeylossRow))
