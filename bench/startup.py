"""Start-up cost of the ``streamcli`` CLI, measured against its baseline in the same run.

What it measures (wall time of a fresh interpreter, ``sys.executable``, one subprocess per run):

1. baseline: ``python -c "import typer"`` -- the floor the CLI cannot go below;
2. ``python -m streamcli --help`` (output to /dev/null);
3. ``python -m streamcli --version``;
4. ``python -c "import streamcli.cli.app"`` -- building the command tree without running it,
   which is what shell completion pays on every <TAB>.

Each command gets warm-up runs first, then ``--runs`` timed runs. The commands are run round-robin
(one of each per round, starting with a different one each round), so machine noise falls on all of
them alike. For each it prints the median, p90 and min in milliseconds and the ratio of its median
to the baseline's median.

It also runs ``python -X importtime -m streamcli --help`` once and reports whether ``grpc`` or
``prompt_toolkit`` got imported (they must not be: ``--help`` has to stay cheap), and the top-level
imports that cost ``--help`` the most.

Run from anywhere, with the interpreter of the environment streamcli is installed in::

    python bench/startup.py [--runs N] [--warmup N]

Standard library only; not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("grpc", "prompt_toolkit")  # top-level packages that `--help` must not import


@dataclasses.dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]


COMMANDS: tuple[Command, ...] = (
    Command('python -c "import typer" (baseline)', (PY, "-c", "import typer")),
    Command("python -m streamcli --help", (PY, "-m", "streamcli", "--help")),
    Command("python -m streamcli --version", (PY, "-m", "streamcli", "--version")),
    Command('python -c "import streamcli.cli.app"', (PY, "-c", "import streamcli.cli.app")),
)


def run_once(argv: Sequence[str]) -> float:
    """Run ``argv`` once with output discarded; return its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")
    return elapsed


def measure(commands: Sequence[Command], runs: int, warmup: int) -> dict[Command, list[float]]:
    """Time every command ``runs`` times, round-robin, after ``warmup`` untimed rounds."""
    samples: dict[Command, list[float]] = {command: [] for command in commands}
    for round_ in range(warmup + runs):
        shift = round_ % len(commands)  # rotate the order so no command always goes first
        for command in (*commands[shift:], *commands[:shift]):
            elapsed = run_once(command.argv)
            if round_ >= warmup:
                samples[command].append(elapsed)
    return samples


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def print_table(samples: dict[Command, list[float]], baseline: Command) -> None:
    base = statistics.median(samples[baseline])
    width = max(len(command.label) for command in samples)
    print(f"{'command':<{width}}  {'median ms':>9}  {'p90 ms':>7}  {'min ms':>7}  {'ratio':>5}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 7}  {'-' * 7}  {'-' * 5}")
    for command, values in samples.items():
        median = statistics.median(values)
        print(
            f"{command.label:<{width}}  {median * 1e3:>9.1f}  {p90(values) * 1e3:>7.1f}"
            f"  {min(values) * 1e3:>7.1f}  {median / base:>5.2f}"
        )


@dataclasses.dataclass(frozen=True)
class Import:
    module: str
    depth: int  # 0 for an import made directly by the program, more for nested ones
    self_us: int
    cumulative_us: int


def import_times(argv: Sequence[str]) -> list[Import]:
    """Run ``argv`` (which must start with the interpreter) under ``-X importtime`` and parse its stderr."""
    proc = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"importtime run exited with {proc.returncode}:\n{proc.stderr}")
    imports: list[Import] = []
    for line in proc.stderr.splitlines():
        # "import time:       984 |      64035 |   typer.rich_utils"
        if not line.startswith("import time:"):
            continue
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        name = fields[2].rstrip()
        module = name.lstrip()
        depth = (len(name) - len(module) - 1) // 2
        imports.append(Import(module, depth, int(fields[0]), int(fields[1])))
    return imports


def report_imports(imports: Sequence[Import], top: int) -> None:
    modules = {imp.module for imp in imports}
    for package in FORBIDDEN:
        hits = sorted(m for m in modules if m == package or m.startswith(package + "."))
        verdict = f"yes ({len(hits)} modules, e.g. {', '.join(hits[:3])})" if hits else "no"
        print(f"{package} imported by --help: {verdict}")
    total = sum(imp.cumulative_us for imp in imports if imp.depth == 0)
    heading = f"Top {top} top-level imports of --help by cumulative time"
    print(f"\n{heading} (one -X importtime run; all imports: {total / 1e3:.1f} ms):")
    for imp in sorted((i for i in imports if i.depth == 0), key=lambda i: i.cumulative_us, reverse=True)[:top]:
        print(f"  {imp.cumulative_us / 1e3:>7.1f} ms  {imp.module}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--top", type=int, default=5, help="--help imports to list (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"{args.warmup} warm-up + {args.runs} timed runs of each command, round-robin\n")
    samples = measure(COMMANDS, args.runs, args.warmup)
    print_table(samples, baseline=COMMANDS[0])
    print()
    report_imports(import_times(COMMANDS[1].argv), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
