"""Output: rows as a table, JSON or CSV, the run's description, and the plot."""

from __future__ import annotations

import csv
import importlib
import io
import json
from collections.abc import Sequence
from typing import Any

from memring.errors import ConfigError
from memring.tools.keyloss.common import (
    FIELDS,
    FORMATS,
    PLOT_INSTALL_HINT,
    KeylossRow,
    PlotUnavailable,
)


def format_rows(rows: Sequence[KeylossRow], fmt: str = "table", *,
                heading: str | None = None) -> str:
    """Render rows as ``"table"`` (aligned text), ``"json"`` or ``"csv"``.

    The result ends with a newline. JSON is a list of objects and CSV has a
    header; both use exactly the :class:`KeylossRow` field names. The table
    shows fractions as percentages, under ``heading`` when one is given (a
    line that says how the rows were measured, see :func:`describe_run`).
    """
    if fmt == "table":
        return (f"{heading}\n" if heading else "") + _format_table(rows)
    if fmt == "json":
        return json.dumps([row.as_dict() for row in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
        return out.getvalue()
    raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def describe_run(*, live: bool, keys: int, seed: int, servers: int | None = None) -> str:
    """One line that says how rows were measured: live (and on what) or simulated.

    ``servers`` is the number of the caller's servers a live run measured
    (``servers``/``down`` of :func:`measure_live`); None for local processes.

    >>> describe_run(live=False, keys=1000, seed=0)
    'simulated: placement math only, no servers (1,000 keys, seed 0)'
    """
    if not live:
        how = "simulated: placement math only, no servers"
    elif servers is None:
        how = "live: real memcached processes on 127.0.0.1, the dead ones SIGKILLed"
    else:
        how = (f"live: your {servers} servers, the down ones stood in for by local "
               "memcached processes that are SIGKILLed")
    return f"{how} ({keys:,} keys, seed {seed})"


def _format_table(rows: Sequence[KeylossRow]) -> str:
    header = ("nodes", "killed", "mode", "keys", "lost", "lost %", "expected %")
    body = [
        (
            str(r.nodes),
            str(r.killed),
            r.mode,
            str(r.keys),
            str(r.lost),
            f"{r.lost_fraction * 100:.2f}%",
            f"{r.expected_fraction * 100:.2f}%",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    left = {2}  # the mode column is text; numbers align right

    def render(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    lines = [render(header), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in body]
    return "\n".join(lines) + "\n"


# -- plot ----------------------------------------------------------------------
def check_plot_available() -> None:
    """Raise :class:`PlotUnavailable` (with the install hint) unless matplotlib imports."""
    _matplotlib()


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and Agg canvas classes.

    Imported by name: matplotlib is the optional ``plot`` extra, and this
    module must import (and type-check) without it.
    """
    try:
        figure = importlib.import_module("matplotlib.figure")
        agg = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as exc:
        raise PlotUnavailable(
            f"plotting needs matplotlib; install it with: {PLOT_INSTALL_HINT}"
        ) from exc
    return figure.Figure, agg.FigureCanvasAgg


def plot_rows(rows: Sequence[KeylossRow], path: str, *, title: str | None = None) -> None:
    """Draw measured next to expected loss per node count, one colour per mode; save to ``path``.

    Measured values are solid lines with dots, expected ones dashed lines with
    crosses. The file format follows the extension (``.png``, ``.svg``,
    ``.pdf``). Raises :class:`PlotUnavailable` without matplotlib.
    """
    figure_class, canvas_class = _matplotlib()
    if not rows:
        raise ConfigError("nothing to plot: no rows")
    fig = figure_class(figsize=(8, 5), dpi=120, layout="constrained")
    canvas_class(fig)
    ax = fig.add_subplot()
    colours = {"ring": "tab:blue", "modulo": "tab:red", "backup": "tab:green"}
    for mode in dict.fromkeys(r.mode for r in rows):
        series = sorted((r for r in rows if r.mode == mode), key=lambda r: r.nodes)
        xs = [r.nodes for r in series]
        colour = colours.get(mode)
        ax.plot(xs, [100 * r.lost_fraction for r in series], marker="o", color=colour,
                label=f"{mode}: measured")  # fmt: skip
        ax.plot(xs, [100 * r.expected_fraction for r in series], marker="x", linestyle="--",
                color=colour, alpha=0.7, label=f"{mode}: expected")  # fmt: skip
    killed = sorted({r.killed for r in rows})
    ax.set_xticks(sorted({r.nodes for r in rows}))
    ax.set_xlabel("nodes in the cluster (N)")
    ax.set_ylabel("keys lost (%)")
    ax.set_ylim(-3, 103)  # points at 0% and 100% stay clear of the frame
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"Keys lost when {'/'.join(map(str, killed))} of N nodes die "
                 f"({rows[0].keys:,} keys)")  # fmt: skip
    fig.savefig(path)
