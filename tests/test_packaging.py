"""The project's metadata agrees with itself: one supported Python floor everywhere it is stated."""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The code needs 3.11: Task.uncancel/cancelling (chat, tails), asyncio.timeout, datetime.UTC.
FLOOR = (3, 11)


def test_the_python_floor_is_the_same_for_pip_ruff_mypy_and_the_readme() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = re.fullmatch(r">=(\d+)\.(\d+)", config["project"]["requires-python"])
    assert required is not None, config["project"]["requires-python"]
    assert (int(required[1]), int(required[2])) == FLOOR
    assert config["tool"]["ruff"]["target-version"] == f"py{FLOOR[0]}{FLOOR[1]}"
    assert config["tool"]["mypy"]["python_version"] == f"{FLOOR[0]}.{FLOOR[1]}"
    assert re.findall(r"Python (\d+\.\d+)\+", (ROOT / "README.md").read_text()) == [f"{FLOOR[0]}.{FLOOR[1]}"]
