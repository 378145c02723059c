"""Print every outcome of the upstream jobs: ``python -m tests.upstream [JOB ...]``.

Failures are grouped by their message and the memring line they come from,
and held against :mod:`tests.upstream.known_failures`, as the gate does.
``--drop socket_module,...`` (pymemcache jobs) runs with those keyword
arguments dropped from every client the suite makes: a diagnosis of what
fails once memring accepts them, never the gate's verdict.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import asdict

from tests.upstream import jobs
from tests.upstream.known_failures import judge


def _group_key(o: jobs.Outcome) -> tuple[str, str, str]:
    message = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", o.message)
    return o.outcome, message, o.where


def report(result: jobs.JobResult, out: list[str], limit: int | None = 12) -> bool:
    counts: dict[str, int] = defaultdict(int)
    for o in result.outcomes.values():
        counts[o.outcome] += 1
    shown = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    state = " (killed: over its time limit)" if result.timed_out else ""
    out.append(f"== {result.job}: {shown} in {result.seconds:.1f}s{state}; log {result.log}")
    groups: dict[tuple[str, str, str], list[jobs.Outcome]] = defaultdict(list)
    for o in result.by_outcome("failed", "error", "unfinished"):
        groups[_group_key(o)].append(o)
    for (kind, message, where), members in sorted(groups.items(), key=lambda g: -len(g[1])):
        lines = sorted({o.test_line for o in members if o.test_line})
        out.append(f"-- {len(members)} {kind}: {message}")
        out.append(f"   memring: {where or '-'}   upstream: {', '.join(lines) or '-'}")
        listed = members if limit is None else members[:limit]
        out.extend(f"     {o.test}" for o in listed)
        if len(listed) < len(members):
            out.append(f"     ... {len(members) - len(listed)} more (-v lists them all)")
    verdict = judge(result.job, [(o.test, o.message)
                                 for o in result.by_outcome("failed", "error", "unfinished")])
    for entry, tests in verdict.explained.items():
        tag = "by design" if entry.by_design else "to fix"
        out.append(f"   known ({tag}, {len(tests)} tests): {entry.cause}")
    for test, _ in verdict.unexpected:
        out.append(f"   NOT KNOWN: {test}")
    for entry in verdict.stale:
        out.append(f"   FIXED (remove from known_failures.py): {entry.tests}")
    return verdict.ok and not result.timed_out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="*", choices=[[], *jobs.JOBS], metavar="JOB",
                        help=f"jobs to run (default: all): {', '.join(jobs.JOBS)}")
    parser.add_argument("--drop", default="", metavar="KW[,KW...]",
                        help="diagnosis: keyword arguments the stand-in drops")
    parser.add_argument("--serial", action="store_true", help="one job after another")
    parser.add_argument("--json", action="store_true", help="every outcome as JSON")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list every test of each group of failures")
    args = parser.parse_args(argv)
    selected = args.jobs or list(jobs.JOBS)
    drop = [d for d in args.drop.split(",") if d]
    try:
        results = jobs.run_jobs(selected, concurrent=not args.serial, drop=drop)
    except jobs.UpstreamUnavailable as exc:
        print(f"upstream sources unavailable: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump({job: [asdict(o) for o in r.outcomes.values()] for job, r in results.items()},
                  sys.stdout, indent=1)
        print()
        return 0
    out: list[str] = []
    limit = None if args.verbose else 12
    ok = all([report(results[job], out, limit) for job in selected])
    print("\n".join(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
