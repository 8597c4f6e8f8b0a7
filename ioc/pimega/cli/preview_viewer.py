"""Stand-ins for image viewers (``python -m pimega.cli.preview_viewer PV SECONDS [CLIENTS]``):
each client (its own CA context, so its own circuit) monitors a waveform PV for a while in
this process; prints the slowest client's update rate in Hz."""

from __future__ import annotations

import sys
import time

from caproto.threading.client import Context


def main(pv_name: str, seconds: float, clients: int = 1) -> float:
    updates: list[list[float]] = [[] for _ in range(clients)]
    contexts = [Context() for _ in range(clients)]
    try:
        subscriptions, callbacks = [], []  # caproto holds callbacks weakly: keep them here
        for context, times in zip(contexts, updates, strict=True):
            (pv,) = context.get_pvs(pv_name)
            subscription = pv.subscribe(data_type="native")
            callbacks.append(lambda sub, response, t=times: t.append(time.monotonic()))
            subscription.add_callback(callbacks[-1])
            subscriptions.append(subscription)
        time.sleep(seconds)
        for subscription in subscriptions:
            subscription.clear()
    finally:
        for context in contexts:
            context.disconnect()
    return min(_rate(times) for times in updates)


def _rate(times: list[float]) -> float:
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span else 0.0


if __name__ == "__main__":
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    print(f"{main(sys.argv[1], float(sys.argv[2]), count):.3f}")
