"""Count and scan with π-MEGA from Bluesky, then read the frames back from the run's documents.

Start the IOC with its simulator first, on this machine (or one that writes to a directory
this machine sees at the same path):

    bash scripts/start.sh                                    # prefix PIMEGA:
    .venv/bin/python examples/count_and_scan.py PIMEGA: --directory /tmp/pimega-runs
    .venv/bin/python examples/count_and_scan.py PIMEGA: --client ophyd

The ophyd-async device (default) emits stream resource / stream datum documents, the ophyd
(v1) device resource / datum documents; either way the frames come back from the HDF5 file.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bluesky import RunEngine
from bluesky.plans import count, scan

Documents = list[tuple[str, dict]]


def ophyd_async_setup(prefix: str, directory: Path):
    """The ophyd-async detector and a simulated motor, and how to read their frames."""
    from ophyd_async.core import StaticPathProvider, UUIDFilenameProvider, init_devices
    from ophyd_async.sim import SimMotor

    from pimega.bluesky.ophyd_async import pimega_detector, read_stream_frames

    with init_devices():  # connects through the RunEngine's event loop
        det = pimega_detector(prefix, StaticPathProvider(UUIDFilenameProvider(), directory),
                              name="det")
        motor = SimMotor(name="motor")

    def frames(docs: Documents) -> list[np.ndarray]:
        resources = {d["uid"]: d for name, d in docs if name == "stream_resource"}
        return [read_stream_frames(resources[d["stream_resource"]], d)
                for name, d in docs if name == "stream_datum"]

    return det, motor, "det-stats-total", frames


def ophyd_setup(prefix: str, directory: Path):
    """The ophyd (v1) detector and a simulated motor, and how to read their frames."""
    from ophyd.sim import SynAxis

    from pimega.bluesky.ophyd import PimegaDetector, read_datum_frames

    det = PimegaDetector(prefix, name="det", write_path_template=str(directory))
    det.wait_for_connection(timeout=10)

    def frames(docs: Documents) -> list[np.ndarray]:
        resources = {d["uid"]: d for name, d in docs if name == "resource"}
        datums = {d["datum_id"]: d for name, d in docs if name == "datum"}
        events = [d for name, d in docs if name == "event"]
        return [read_datum_frames(resources[datums[uid]["resource"]], datums[uid])
                for uid in (e["data"]["det_image"] for e in events)]

    return det, SynAxis(name="motor"), "det_stats1_total", frames


def run_and_report(RE: RunEngine, title: str, plan, total_key: str,
                   frames: Callable[[Documents], list[np.ndarray]]) -> None:
    docs: Documents = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    events = [d for name, d in docs if name == "event"]
    recorded = frames(docs)
    print(f"{title}: {len(events)} events, {sum(len(f) for f in recorded)} frames read back")
    for event, frame in zip(events, recorded, strict=True):
        motor = f"motor={event['data']['motor']:+.2f}  " if "motor" in event["data"] else ""
        print(f"  {motor}frame {frame.shape[1:]} {frame.dtype}  sum={int(frame.sum())}"
              f"  Stats1:Total={event['data'][total_key]:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prefix", help="IOC prefix, e.g. PIMEGA:")
    parser.add_argument("--directory", type=Path, default=Path("/tmp/pimega-runs"),
                        help="where the IOC writes the HDF5 files (made if missing)")
    parser.add_argument("--client", choices=("ophyd-async", "ophyd"), default="ophyd-async")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)

    RE = RunEngine({})
    setup = ophyd_async_setup if args.client == "ophyd-async" else ophyd_setup
    det, motor, total_key, frames = setup(args.prefix, args.directory.resolve())
    run_and_report(RE, "count", count([det], num=3), total_key, frames)
    run_and_report(RE, "scan", scan([det], motor, -1.0, 1.0, 5), total_key, frames)


if __name__ == "__main__":
    main()
