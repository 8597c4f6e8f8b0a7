"""``pimega bench --preview``: the preview for many viewers (decision 12).

(1) caproto's per-subscriber path, in this process, for one 1536² UInt16 image: what one update
costs with 1 and 3 subscribers, as ArrayData sends it now (SHORT, converted once into the wire
bytes every subscription shares) against the LONG waveform it replaced (caproto converted the
array again for each subscriber). Each step is caproto's own: ``ChannelData.write`` (publish,
one read per DBR type), ``EventAddResponse`` per subscription (what ``ServerChannel.subscribe``
builds) and the ``b"".join`` of its buffers that the asyncio server sends on each circuit.

(2) A real IOC (one 1536² module, acquiring continuously): with no viewer, 1 and 3 viewers
(each its own circuit, in another process), the server's CPU, each viewer's update rate and
put-with-callback round trips on a control PV from this process (another circuit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import caproto as ca
import numpy as np
from caproto import ChannelType
from caproto._utils import ChannelFilter
from caproto.server import PVGroup, PvpropertyIntegerRO, pvproperty
from caproto.server.common import SubscriptionSpec

from pimega.cli.figures import Figure

PREVIEW_CLIENTS = 3
PREVIEW_SHAPE = (1536, 1536)
PREFIX = "BENCH:"


# --- (1) caproto's per-subscriber path ---------------------------------------------------


async def _update_seconds(channel: Any, post: Any, subscribers: int, repeats: int) -> float:
    """Best time of one update through caproto's server path to ``subscribers`` (DBR_TIME of
    the native type, each its own circuit): post, then for each subscription the response
    and the bytes its circuit sends."""
    time_type = ChannelType.TIME_INT if channel.data_type == ChannelType.INT \
        else ChannelType.TIME_LONG
    queue: asyncio.Queue = asyncio.Queue()
    spec = SubscriptionSpec(db_entry=channel, data_type_name=time_type.name, mask=1,
                            channel_filter=ChannelFilter(None, None, None, None))
    channel._queues[queue][None][time_type.name].add(spec)
    best = float("inf")
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            await post()
            _, metadata, values, _, _ = queue.get_nowait()
            for subscription_id in range(subscribers):
                response = ca.EventAddResponse(values, time_type, len(values), 1,
                                               subscription_id, metadata=metadata)
                b"".join([memoryview(response.header), *response.buffers])
            best = min(best, time.perf_counter() - t0)
    finally:
        channel._queues.pop(queue)
    return best


def bench_serialisation(repeats: int = 20) -> Iterator[Figure]:
    """ms of one 1536² UInt16 update with 1 and 3 subscribers, now against the LONG path, and
    what each further subscriber adds."""
    from pimega.iocs.image_group import PreviewWaveform, _as_waveform

    class _Waveforms(PVGroup):
        """ArrayData as served now, and the LONG waveform it replaced."""

        short = pvproperty(value=[], name="ArrayData", dtype=PreviewWaveform,
                           record="waveform", max_length=PREVIEW_SHAPE[0] * PREVIEW_SHAPE[1])
        long = pvproperty(value=[], name="ArrayDataLong", dtype=PvpropertyIntegerRO,
                          record="waveform", max_length=PREVIEW_SHAPE[0] * PREVIEW_SHAPE[1])

    image = np.random.default_rng(0).integers(0, 65536, PREVIEW_SHAPE, dtype=np.uint16)

    async def measure() -> dict[tuple[str, int], float]:
        group = _Waveforms(prefix=PREFIX + "image1:")
        group.short.set_type("SHORT")

        async def post_short() -> None:  # the conversion is part of the update (an executor's)
            await group.short.post_image(_as_waveform(image, "SHORT"))

        async def post_long() -> None:  # image1 before: a LONG copy, caproto's conversions
            await group.long.write(image.ravel().astype(">i4"), verify_value=False)

        return {(kind, n): await _update_seconds(channel, post, n, repeats)
                for kind, channel, post in (("short", group.short, post_short),
                                            ("long", group.long, post_long))
                for n in (1, PREVIEW_CLIENTS)}

    logging.getLogger(__name__).setLevel(logging.ERROR)  # not caproto's warning on big arrays
    seconds = asyncio.run(measure())
    for n in (1, PREVIEW_CLIENTS):
        now, before = 1e3 * seconds["short", n], 1e3 * seconds["long", n]
        yield Figure(f"preview_update_ms_{n}subscriber{'s' * (n > 1)}", now, "ms", before,
                     now / before)
    extra = {kind: 1e3 * (seconds[kind, PREVIEW_CLIENTS] - seconds[kind, 1])
             / (PREVIEW_CLIENTS - 1) for kind in ("short", "long")}
    yield Figure("preview_ms_per_further_subscriber", extra["short"], "ms", extra["long"],
                 extra["short"] / extra["long"])


# --- (2) a real IOC ------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_percent(pid: int, seconds: float) -> float:
    """CPU % of process ``pid`` over the next ``seconds``."""
    cpu, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (_cpu_seconds(pid) - cpu) / (time.monotonic() - t0)


def _viewers(env: dict[str, str], clients: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pimega.cli.preview_viewer", PREFIX + "image1:ArrayData",
         str(seconds), str(clients), "each"], env=env, stdout=subprocess.PIPE, text=True)


def bench_preview(seconds: float, frame_rate_hz: float,
                  min_callback_s: float) -> Iterator[Figure]:
    """(1), then (2)."""
    yield from bench_serialisation()
    yield from bench_ioc_preview(seconds, frame_rate_hz, min_callback_s)


def bench_ioc_preview(seconds: float, frame_rate_hz: float,
                      min_callback_s: float) -> Iterator[Figure]:
    """A full-module IOC acquiring continuously at ``frame_rate_hz``, the preview at most
    every ``min_callback_s``; for ``seconds`` each with 0, 1 and :data:`PREVIEW_CLIENTS`
    viewers: the server's CPU, each viewer's rate, and control puts with callback from this
    process (another circuit)."""
    from caproto.threading.client import Context

    from pimega.cli.loopback import loopback_environment

    logging.getLogger("caproto").setLevel(logging.WARNING)
    env = os.environ | loopback_environment()
    os.environ.update(env)  # this process's CA client talks to the IOC on loopback too
    ioc = subprocess.Popen([sys.executable, "-m", "pimega.cli.ioc", "--sim", "--prefix", PREFIX,
                            "--no-autosave"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    context, watching = Context(), Context()
    cpu: dict[int, float] = {}
    rates: dict[int, list[float]] = {}
    round_trips: dict[int, list[float]] = {}
    watched_trips: dict[int, list[float]] = {}
    try:
        names = ["Heartbeat_RBV", "cam1:ImageMode", "cam1:AcquirePeriod", "cam1:Acquire",
                 "image1:MinCallbackTime", "cam1:NumExposures"]
        pvs = dict(zip(names, context.get_pvs(*(PREFIX + n for n in names)), strict=True))
        # a client that monitors what it puts, as ophyd does: its circuit carries updates
        watched, readback = watching.get_pvs(PREFIX + "cam1:NumExposures",
                                             PREFIX + "cam1:NumExposures_RBV")
        monitor = readback.subscribe()
        monitor.add_callback(_ignore)
        deadline = time.monotonic() + 120
        while pvs["Heartbeat_RBV"].read(timeout=60).data[0] < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("the IOC did not start")
            time.sleep(0.2)
        pvs["image1:MinCallbackTime"].write(min_callback_s, wait=True)
        pvs["cam1:ImageMode"].write(2, wait=True)
        pvs["cam1:AcquirePeriod"].write(1 / frame_rate_hz, wait=True)
        pvs["cam1:Acquire"].write(1, wait=False)
        time.sleep(2)  # the pipeline warmed up
        for clients in (0, 1, PREVIEW_CLIENTS):
            viewers = _viewers(env, clients, seconds + 3) if clients else None
            time.sleep(2)  # connected, first images in
            cpu_start, t0 = _cpu_seconds(ioc.pid), time.monotonic()
            round_trips[clients], watched_trips[clients] = [], []
            while time.monotonic() < t0 + seconds:
                for pv, trips in ((pvs["cam1:NumExposures"], round_trips[clients]),
                                  (watched, watched_trips[clients])):
                    start = time.perf_counter()
                    pv.write(1, wait=True, timeout=10)
                    trips.append(time.perf_counter() - start)
                    time.sleep(0.005)
            cpu[clients] = 100 * (_cpu_seconds(ioc.pid) - cpu_start) / (time.monotonic() - t0)
            if viewers is not None:
                rates[clients] = [float(r) for r in viewers.communicate(timeout=60)[0].split()]
        pvs["cam1:Acquire"].write(0, wait=True)
    finally:
        context.disconnect()
        watching.disconnect()
        ioc.terminate()
        ioc.wait(timeout=20)
    target = 1 / max(min_callback_s, 0.02)
    for clients in (1, PREVIEW_CLIENTS):
        slowest = min(rates[clients])
        yield Figure(f"preview_1536x1536_hz_{clients}client{'s' * (clients > 1)}_slowest",
                     slowest, "Hz", target, slowest / target)
    yield Figure("preview_server_cpu_0clients_pct", cpu[0], "%", cpu[0], 1.0)
    yield Figure("preview_server_cpu_1client_pct", cpu[1], "%", cpu[0], cpu[1] / cpu[0])
    yield Figure(f"preview_server_cpu_{PREVIEW_CLIENTS}clients_pct", cpu[PREVIEW_CLIENTS], "%",
                 cpu[1], cpu[PREVIEW_CLIENTS] / cpu[1])
    p99 = {n: 1e3 * float(np.percentile(times, 99)) for n, times in round_trips.items()}
    yield Figure("control_put_p99_ms_0clients", p99[0], "ms", 20.0, p99[0] / 20.0)
    yield Figure(f"control_put_p99_ms_{PREVIEW_CLIENTS}clients", p99[PREVIEW_CLIENTS], "ms",
                 p99[0], p99[PREVIEW_CLIENTS] / p99[0])
    p50 = 1e3 * float(np.percentile(round_trips[PREVIEW_CLIENTS], 50))
    yield Figure("control_put_p50_ms", p50, "ms", 20.0, p50 / 20.0)
    yield Figure("control_put_p99_ms", p99[PREVIEW_CLIENTS], "ms", 20.0,
                 p99[PREVIEW_CLIENTS] / 20.0)
    for clients in (0, PREVIEW_CLIENTS):  # the put's answer follows the readback's update
        watched_p99 = 1e3 * float(np.percentile(watched_trips[clients], 99))
        yield Figure(f"monitored_put_p99_ms_{clients}clients", watched_p99, "ms", p99[clients],
                     watched_p99 / p99[clients])


def _ignore(*_: object) -> None:
    """A monitor's callback: the bench only needs the updates to flow."""
