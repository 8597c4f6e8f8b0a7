"""``pimega-ioc``: the areaDetector-style Channel Access IOC of one π-MEGA back-end node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pimega.core.errors import ConfigError
from pimega.core.geometry import ArrayLayout
from pimega.iocs.app import ioc_class
from pimega.pipeline.backend import Backend, make_backend
from pimega.runtime import NODE_STAGES
from pimega.runtime.engine import Acquisition
from pimega.sim.sender import SimConfig

from .main import add_geometry_arguments, layout_from
from .nodes import RDMA_SIM_PORT, listening_node, rdma_node, replay_node, simulated_node
from .serving import add_serving_arguments, configure_logging, run

PROG = "pimega-ioc"


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__,
        epilog="Channel Access interface and port follow EPICS_CAS_INTF_ADDR_LIST and "
               "EPICS_CA_SERVER_PORT (caproto's defaults otherwise).")
    add_serving_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--sim", action="store_true",
                        help="start the built-in detector simulator and connect it")
    source.add_argument("--listen", type=parse_address, metavar="HOST:PORT",
                        help="receive wire-v1 frames from an external sender on HOST:PORT")
    source.add_argument("--replay", type=Path, metavar="FILE",
                        help="replay a file (NeXus written by pimega, or raw wire frames) at "
                             "each acquisition, at its frame rate (or --replay-rate)")
    p.add_argument("--replay-rate", type=float, metavar="HZ",
                   help="with --replay: frames/s (0: as fast as the pipeline takes them)")
    add_geometry_arguments(p)
    p.add_argument("--pattern", choices=["counter", "phantom"], default="counter",
                   help="simulator pattern (with --sim)")
    p.add_argument("--module-id", type=int, default=0, metavar="N",
                   help="with --sim: the array module this node stands for (0 top left, "
                        "row-major); the simulator sends that module's counter pattern")
    p.add_argument("--transport", choices=["tcp", "rdma"], default="tcp",
                   help="rdma: receive over RDMA (pyverbs and an RDMA device; --listen then "
                        "takes the address of the device's interface)")
    p.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="cpu",
                   help="where the pipeline runs; auto takes the GPU when CuPy and a device "
                        "are there, else the CPU (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    layout = layout_from(args)
    group_class = ioc_class(layout.n_modules, layout.width, NODE_STAGES)
    return run(PROG, args, group_class,
               lambda: make_node(args, layout, make_backend(args.backend)),
               lambda node: " + ".join(source.description for source in node.sources))


def make_node(args: argparse.Namespace, layout: ArrayLayout, backend: Backend) -> Acquisition:
    if args.transport == "rdma":
        if args.replay:
            raise ConfigError("--transport rdma goes with --listen HOST:PORT or --sim")
        host, port = args.listen or (None, RDMA_SIM_PORT)
        config = None if args.listen else SimConfig(layout=layout, pattern=args.pattern)
        return rdma_node(layout, host, port, config, backend=backend)
    if args.listen:
        return listening_node(layout, *args.listen, backend=backend)
    if args.replay:
        return replay_node(layout, args.replay, args.replay_rate, backend=backend)
    return simulated_node(layout, SimConfig(layout=layout, pattern=args.pattern,
                                            first_module=args.module_id), backend=backend)


if __name__ == "__main__":
    sys.exit(main())
