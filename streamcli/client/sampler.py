"""Samples of this machine, read with psutil: CPU, memory, load, disk and network, every interval.

Each round is a list of samples labelled ``host`` (this machine's name):
``cpu.percent`` (all CPUs, and per CPU with a ``cpu`` label), ``memory.used_bytes``,
``memory.available_bytes``, ``memory.percent``, ``swap.percent``, ``load.1m``/``5m``/``15m``,
and the disk and network counters as rates over the round
(``disk.read_bytes_per_second``, ``disk.write_bytes_per_second``,
``net.sent_bytes_per_second``, ``net.received_bytes_per_second``, per network
interface with an ``interface`` label too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.records import Parsed


class MachineSampler:
    """Reads one round of samples at a time (rates since the previous round)."""

    def __init__(self) -> None:
        import psutil

        self._psutil: Any = psutil
        self.host = socket.gethostname()
        psutil.cpu_percent(percpu=True)  # the first call only starts the measurement
        self._disk = psutil.disk_io_counters()
        self._net = psutil.net_io_counters(pernic=True)
        self._at = time.monotonic()

    def round(self) -> list[pb.MetricData]:
        ps = self._psutil
        now = time.monotonic()
        elapsed = max(now - self._at, 1e-3)
        samples: list[pb.MetricData] = []

        def add(name: str, value: float, **labels: str) -> None:
            samples.append(pb.MetricData(name=name, value=float(value), labels={"host": self.host, **labels}))

        per_cpu = ps.cpu_percent(percpu=True)
        if per_cpu:
            add("cpu.percent", sum(per_cpu) / len(per_cpu))
            for n, percent in enumerate(per_cpu):
                add("cpu.percent", percent, cpu=str(n))
        memory = ps.virtual_memory()
        add("memory.used_bytes", memory.used)
        add("memory.available_bytes", memory.available)
        add("memory.percent", memory.percent)
        add("swap.percent", ps.swap_memory().percent)
        with contextlib.suppress(OSError, AttributeError):
            for minutes, load in zip(("1m", "5m", "15m"), os.getloadavg(), strict=True):
                add(f"load.{minutes}", load)
        disk = ps.disk_io_counters()
        if disk is not None and self._disk is not None:
            add("disk.read_bytes_per_second", max(0, disk.read_bytes - self._disk.read_bytes) / elapsed)
            add("disk.write_bytes_per_second", max(0, disk.write_bytes - self._disk.write_bytes) / elapsed)
        net = ps.net_io_counters(pernic=True)
        sent = received = 0.0
        for interface, counters in net.items():
            before = self._net.get(interface)
            if before is None:
                continue
            out = max(0, counters.bytes_sent - before.bytes_sent) / elapsed
            into = max(0, counters.bytes_recv - before.bytes_recv) / elapsed
            add("net.sent_bytes_per_second", out, interface=interface)
            add("net.received_bytes_per_second", into, interface=interface)
            sent, received = sent + out, received + into
        add("net.sent_bytes_per_second", sent)
        add("net.received_bytes_per_second", received)
        self._disk, self._net, self._at = disk, net, now
        return samples


async def machine_rounds(
    interval: float, duration: float | None, stop: asyncio.Event
) -> AsyncIterator[list[Parsed[bytes]]]:
    """A round of samples every ``interval`` seconds, for ``duration`` seconds (None: until ``stop`` is set)
    or until ``stop`` is set. Each sample's "line" is its round's number (from 1); the sample is serialized, as
    a file's are (``metric_records``)."""
    sampler = MachineSampler()
    started = time.monotonic()
    number = 0
    while not stop.is_set():
        wake = started + (number + 1) * interval
        if duration is not None and wake - started > duration + 1e-6:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, wake - time.monotonic()))
        if stop.is_set():
            return
        number += 1
        yield [Parsed(number, f"round {number}", sample.SerializeToString()) for sample in sampler.round()]
