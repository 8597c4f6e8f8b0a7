"""Stand-ins for image viewers (``python -m pimega.cli.preview_viewer PV SECONDS [CLIENTS
[each]]``): each client (its own CA context, so its own circuit) monitors a waveform PV for a
while in this process, as a screen does (DBR_TIME); prints the slowest client's update rate
in Hz, or with ``each`` every client's rate (space-separated)."""

from __future__ import annotations

import sys
import time

from caproto.threading.client import Context


def rates(pv_name: str, seconds: float, clients: int = 1) -> list[float]:
    """Each client's update rate (Hz) over ``seconds``."""
    updates: list[list[float]] = [[] for _ in range(clients)]
    contexts = [Context() for _ in range(clients)]
    try:
        subscriptions, callbacks = [], []  # caproto holds callbacks weakly: keep them here
        for context, times in zip(contexts, updates, strict=True):
            (pv,) = context.get_pvs(pv_name)
            subscription = pv.subscribe(data_type="time")
            callbacks.append(lambda sub, response, t=times: t.append(time.monotonic()))
            subscription.add_callback(callbacks[-1])
            subscriptions.append(subscription)
        time.sleep(seconds)
        for subscription in subscriptions:
            subscription.clear()
    finally:
        for context in contexts:
            context.disconnect()
    return [_rate(times[1:]) for times in updates]  # the first: the value at subscribing


def main(pv_name: str, seconds: float, clients: int = 1) -> float:
    """The slowest client's update rate (Hz)."""
    return min(rates(pv_name, seconds, clients))


def _rate(times: list[float]) -> float:
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span else 0.0


if __name__ == "__main__":
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    each = rates(sys.argv[1], float(sys.argv[2]), count)
    print(" ".join(f"{r:.3f}" for r in each) if sys.argv[4:] == ["each"] else f"{min(each):.3f}")
