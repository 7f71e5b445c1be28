"""Start-up cost of the ``streamcli`` CLI, measured against its baselines in the same run.

What it measures (wall time of a fresh interpreter, ``sys.executable``, one subprocess per run):

1. baseline: ``python -c "import typer"`` -- the floor a typer CLI cannot go below;
2. ``python -m streamcli --help`` (output to /dev/null);
3. ``python -m streamcli --version``;
4. ``python -c "from streamcli.cli.app import app"`` -- importing every command module and assembling
   the whole tree (what ``scripts/gen_completions.py`` and the tests use; a command builds only its part);
5. baseline of the unary commands: ``python -c "import typer, grpc"`` -- a gRPC client with a typer CLI;
6. ``python -c "import typer, grpc, grpc.aio, rich.console, rich.table; from streamcli._proto... import
   streaming_service_pb2_grpc"`` -- what ``files ls`` imports of its dependencies (protobuf with the
   contract's messages, grpc.aio, rich's table), without any of streamcli's own code;
7. unary commands against a ``streamcli serve`` this script starts (a temporary data dir holding three
   small files): ``files ls`` (the table), ``--json files ls``, ``files info ID`` and ``health``.

Commands 2-4 are compared with baseline 1, 6 and the unary commands with baseline 5. Each command gets
warm-up runs first, then ``--runs`` timed runs. The commands are run round-robin (one of each per
round, starting with a different one each round), so machine noise falls on all of them alike. For
each it prints the median, p90 and min wall time in milliseconds and the ratio of its median to its
baseline's, then the median CPU time (user + system) of the process and its ratio: on a machine shared
with other work, wall time also measures the others' load, CPU time much less so.

It also runs ``-X importtime`` once for ``--help`` and once for each unary command and reports which
packages that must not be imported there were (``grpc`` and ``prompt_toolkit`` for ``--help``;
pydantic, prompt_toolkit, msgspec, psutil, ddsketch, prometheus_client for a unary command, and rich
too unless it draws a table), then where the unary commands' time beyond their baseline goes: the
modules they import that ``import typer, grpc`` does not, summed by top-level package.

Run from anywhere, with the interpreter of the environment streamcli is installed in::

    python bench/startup.py [--runs N] [--warmup N]

Standard library, grpc and streamcli (``bench/_common.py``); not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from _common import clean_env, serve

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("grpc", "prompt_toolkit")  # top-level packages that `--help` must not import
#: Top-level packages that a unary command must not import (rich only where it draws a table).
FORBIDDEN_UNARY = ("pydantic", "prompt_toolkit", "msgspec", "psutil", "ddsketch", "prometheus_client")


@dataclasses.dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]
    baseline: str = 'python -c "import typer" (baseline)'
    # Another checkout of streamcli to import instead: PYTHONPATH, and the working directory too (``python -m``
    # puts the working directory first on sys.path, before PYTHONPATH).
    tree: str | None = None

    def env(self) -> dict[str, str]:
        return clean_env() if self.tree is None else {**clean_env(), "PYTHONPATH": self.tree}


COMMANDS: tuple[Command, ...] = (
    Command('python -c "import typer" (baseline)', (PY, "-c", "import typer")),
    Command("python -m streamcli --help", (PY, "-m", "streamcli", "--help")),
    Command("python -m streamcli --version", (PY, "-m", "streamcli", "--version")),
    Command('python -c "from streamcli.cli.app import app"', (PY, "-c", "from streamcli.cli.app import app")),
)
UNARY_BASELINE = 'python -c "import typer, grpc" (baseline)'
#: What ``files ls`` imports of its dependencies and nothing of streamcli's own but the generated code: the
#: protobuf runtime with the contract's messages and stub, grpc.aio, and rich's console and table.
DEPENDENCY_IMPORTS = (
    "import typer, grpc, grpc.aio, rich.console, rich.table; "
    "from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc"
)
DEPENDENCIES = "files ls's dependencies, imported"


def unary_commands(address: str, file_id: str, tree: str | None = None) -> tuple[Command, ...]:
    """The unary commands against the server at ``address`` (run from ``tree`` if given)."""
    cli = (PY, "-m", "streamcli", "--address", address)
    suffix = "" if tree is None else f" [{tree}]"
    return (
        Command(f"streamcli files ls{suffix}", (*cli, "files", "ls"), UNARY_BASELINE, tree),
        Command(f"streamcli --json files ls{suffix}", (*cli, "--json", "files", "ls"), UNARY_BASELINE, tree),
        Command(f"streamcli files info ID{suffix}", (*cli, "files", "info", file_id), UNARY_BASELINE, tree),
        Command(f"streamcli health{suffix}", (*cli, "health"), UNARY_BASELINE, tree),
    )


@contextlib.contextmanager
def server_with_files() -> Iterator[tuple[str, str]]:
    """A ``streamcli serve`` on a free loopback port holding three small files: (its address, a file id)."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        serve(
            "streamcli serve",
            (PY, "-m", "streamcli", "serve", "--address", "127.0.0.1:0", "--data-dir", str(Path(scratch) / "data")),
            Path(scratch) / "serve.log",
        ) as served,
    ):
        file_id = ""
        for n in range(3):
            path = Path(scratch) / f"file-{n}.txt"
            path.write_text(f"file {n}\n")
            upload = subprocess.run(
                (PY, "-m", "streamcli", "--address", served.address, "upload", str(path)),
                capture_output=True,
                text=True,
                env=clean_env(),
                check=True,
            )
            file_id = upload.stdout.split()[0]
        yield served.address, file_id


@dataclasses.dataclass(frozen=True)
class Sample:
    wall: float  # seconds from start to exit
    cpu: float  # user + system CPU seconds of the process (what it costs, whatever else the machine runs)


def run_once(argv: Sequence[str], env: dict[str, str], cwd: str | Path = ROOT) -> Sample:
    """Run ``argv`` once in ``cwd`` with output discarded; return its wall and CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server, a child too, is counted once it exits
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {proc.returncode}:\n{proc.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(elapsed, cpu)


def measure(commands: Sequence[Command], runs: int, warmup: int) -> dict[Command, list[Sample]]:
    """Time every command ``runs`` times, round-robin, after ``warmup`` untimed rounds."""
    samples: dict[Command, list[Sample]] = {command: [] for command in commands}
    for round_ in range(warmup + runs):
        shift = round_ % len(commands)  # rotate the order so no command always goes first
        for command in (*commands[shift:], *commands[:shift]):
            sample = run_once(command.argv, command.env(), command.tree or ROOT)
            if round_ >= warmup:
                samples[command].append(sample)
    return samples


def p90(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def print_table(samples: dict[Command, list[Sample]]) -> None:
    """Wall time (median, p90, min, median / its baseline's) and CPU time (median, median / its baseline's)."""
    wall = {command.label: statistics.median(s.wall for s in runs) for command, runs in samples.items()}
    cpu = {command.label: statistics.median(s.cpu for s in runs) for command, runs in samples.items()}
    width = max(len(command.label) for command in samples)
    print(
        f"{'command':<{width}}  {'median ms':>9}  {'p90 ms':>7}  {'min ms':>7}  {'ratio':>5}"
        f"  {'CPU ms':>7}  {'CPU ratio':>9}"
    )
    print(f"{'-' * width}  {'-' * 9}  {'-' * 7}  {'-' * 7}  {'-' * 5}  {'-' * 7}  {'-' * 9}")
    for command, runs in samples.items():
        walls = [s.wall for s in runs]
        label, base = command.label, command.baseline
        print(
            f"{label:<{width}}  {wall[label] * 1e3:>9.1f}  {p90(walls) * 1e3:>7.1f}  {min(walls) * 1e3:>7.1f}"
            f"  {wall[label] / wall[base]:>5.2f}  {cpu[label] * 1e3:>7.1f}  {cpu[label] / cpu[base]:>9.2f}"
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
        env=clean_env(),
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


def report_unary_imports(commands: Sequence[Command], top: int) -> None:
    """For each unary command: forbidden packages it imported, and its imports beyond the baseline's."""
    baseline = {imp.module for imp in import_times(commands[0].argv)}
    for command in commands[1:]:
        imports = import_times(command.argv)
        modules = {imp.module for imp in imports}
        forbidden = [*FORBIDDEN_UNARY, *([] if command.label == "streamcli files ls" else ["rich"])]
        hits = [p for p in forbidden if any(m == p or m.startswith(p + ".") for m in modules)]
        extra: collections.Counter[str] = collections.Counter()
        for imp in imports:
            if imp.module not in baseline:
                parts = imp.module.split(".")
                extra[".".join(parts[:2]) if parts[0] in ("streamcli", "google") else parts[0]] += imp.self_us
        total = sum(extra.values())
        print(
            f"\n{command.label}: forbidden imports: {', '.join(hits) or 'none'}; "
            f"imports beyond the baseline's: {total / 1e3:.1f} ms (one -X importtime run), most:"
        )
        for package, self_us in extra.most_common(top):
            print(f"  {self_us / 1e3:>7.1f} ms  {package}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    parser.add_argument(
        "--other-tree",
        metavar="DIR",
        help="also run the unary commands from this checkout of streamcli (PYTHONPATH=DIR), e.g. the main branch",
    )
    parser.add_argument("--top", type=int, default=5, help="--help imports to list (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")

    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"{args.warmup} warm-up + {args.runs} timed runs of each command, round-robin\n")
    with server_with_files() as (address, file_id):
        unary = (
            Command(UNARY_BASELINE, (PY, "-c", "import typer, grpc"), UNARY_BASELINE),
            Command(DEPENDENCIES, (PY, "-c", DEPENDENCY_IMPORTS), UNARY_BASELINE),
            *unary_commands(address, file_id),
        )
        other = () if args.other_tree is None else unary_commands(address, file_id, args.other_tree)
        samples = measure((*COMMANDS, *unary, *other), args.runs, args.warmup)
        print_table(samples)
        print()
        report_imports(import_times(COMMANDS[1].argv), args.top)
        report_unary_imports((unary[0], *unary[2:]), args.top)  # without the dependencies row
    return 0


if __name__ == "__main__":
    sys.exit(main())
