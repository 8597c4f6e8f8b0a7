"""A stand-in for an image viewer (``python -m pimega.cli.preview_viewer PV SECONDS``): it
monitors a waveform PV for a while in its own process and prints the update rate in Hz."""

from __future__ import annotations

import sys
import time

from caproto.threading.client import Context


def main(pv_name: str, seconds: float) -> float:
    updates: list[float] = []

    def on_update(sub: object, response: object) -> None:
        updates.append(time.monotonic())

    context = Context()
    try:
        (pv,) = context.get_pvs(pv_name)
        subscription = pv.subscribe(data_type="native")
        subscription.add_callback(on_update)
        time.sleep(seconds)
        subscription.clear()
    finally:
        context.disconnect()
    span = updates[-1] - updates[0] if len(updates) > 1 else 0.0
    return (len(updates) - 1) / span if span else 0.0


if __name__ == "__main__":
    print(f"{main(sys.argv[1], float(sys.argv[2])):.3f}")
