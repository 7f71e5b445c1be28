"""Which parser `streamcli batch ingest` reads records with: the candidates on this machine, same input, same run.

For each format, every candidate parses the same generated lines into the fields of a record (key, value,
timestamp, the other columns) one line at a time, as ingest must (each refused line is named by its line
number), and the figure is lines per second of the best of ``--rounds`` rounds. Candidates that are not
installed are skipped and said so. The stdlib's ``json`` and ``csv`` are the baselines.

    python bench/parsers.py [--lines N] [--rounds N]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections.abc import Callable
from typing import Any


def ndjson_lines(count: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "key": f"sensor-{n % 1000}",
                "value": n * 0.25,
                "timestamp": "2026-11-24T10:00:00.123456Z",
                "site": "north",
                "ok": n % 2 == 0,
            }
        ).encode()
        + b"\n"
        for n in range(count)
    ]


def csv_text(count: int) -> str:
    rows = ["key,value,timestamp,site,ok\n"]
    rows += [
        f'sensor-{n % 1000},{n * 0.25},2026-11-24T10:00:00.123456Z,"north, gate {n % 7}",{n % 2}\n'
        for n in range(count)
    ]
    return "".join(rows)


def fields(record: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    rest = {k: v for k, v in record.items() if k not in ("key", "value", "timestamp")}
    return record.get("key"), record.get("value"), record.get("timestamp"), rest


def ndjson_candidates() -> dict[str, Callable[[list[bytes]], int]]:
    found: dict[str, Callable[[list[bytes]], int]] = {}

    def stdlib(lines: list[bytes]) -> int:
        decoder = json.JSONDecoder()
        for line in lines:
            fields(decoder.decode(line.decode()))
        return len(lines)

    found["json (stdlib, baseline)"] = stdlib
    try:
        import orjson

        def with_orjson(lines: list[bytes]) -> int:
            loads = orjson.loads
            for line in lines:
                fields(loads(line))
            return len(lines)

        found["orjson"] = with_orjson
    except ImportError:
        pass
    try:
        import msgspec

        def with_msgspec(lines: list[bytes]) -> int:
            decode = msgspec.json.Decoder().decode
            for line in lines:
                fields(decode(line))
            return len(lines)

        found["msgspec (dict)"] = with_msgspec
    except ImportError:
        pass
    try:
        import pyarrow.json as pa_json

        def with_pyarrow(lines: list[bytes]) -> int:
            # Whole-file reader: no per-line errors; measured as the ceiling of a columnar read.
            table = pa_json.read_json(io.BytesIO(b"".join(lines)))
            for record in table.to_pylist():
                fields(record)
            return table.num_rows

        found["pyarrow.json (whole file, to rows)"] = with_pyarrow
    except ImportError:
        pass
    return found


def csv_candidates() -> dict[str, Callable[[str], int]]:
    found: dict[str, Callable[[str], int]] = {}

    def stdlib(text: str) -> int:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader)
        count = 0
        for row in reader:
            fields(dict(zip(header, row, strict=False)))
            count += 1
        return count

    found["csv (stdlib, baseline)"] = stdlib
    try:
        import pyarrow.csv as pa_csv

        def with_pyarrow(text: str) -> int:
            table = pa_csv.read_csv(io.BytesIO(text.encode()))
            for record in table.to_pylist():
                fields(record)
            return table.num_rows

        found["pyarrow.csv (whole file, to rows)"] = with_pyarrow
    except ImportError:
        pass
    return found


def best(fn: Callable[[Any], int], data: Any, rounds: int) -> float:
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        count = fn(data)
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lines = ndjson_lines(args.lines)
    text = csv_text(args.lines)
    for title, candidates, data in (("NDJSON", ndjson_candidates(), lines), ("CSV", csv_candidates(), text)):
        print(f"{title}: {args.lines} lines, best of {args.rounds}")
        baseline = 0.0
        for name, fn in candidates.items():
            rate = best(fn, data, args.rounds)
            baseline = baseline or rate
            print(f"  {name:40} {rate / 1000:8.0f}k lines/s  {rate / baseline:5.2f}x")


if __name__ == "__main__":
    main()
