"""``pimega-array``: the IOC of a whole array, driving one module node's IOC per module.

It serves the PVs of a module node's IOC (``cam1:``, ``image1:``, ``HDF1:``, ``Stats1:``,
``ROI1:``, ``Pipe:``, ``Pva1:Image``) for the whole array, so clients drive the array as one
detector. The module IOCs are Channel Access servers like any other: this IOC finds them
through ``EPICS_CA_ADDR_LIST`` (each one's host and port) and serves on
``EPICS_CA_SERVER_PORT`` itself.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pimega.coordinator import ArrayNode, default_config, load_config
from pimega.core.errors import PimegaError
from pimega.iocs.app import ioc_class
from pimega.runtime import NODE_STAGES

from .serving import add_serving_arguments, configure_logging, run

PROG = "pimega-array"
#: Width of the Recon: slices (the smallest caproto serves): the coordinator reconstructs
#: nothing, its nodes do.
RECON_WIDTH = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__,
        epilog="Module IOCs are searched through EPICS_CA_ADDR_LIST (e.g. '127.0.0.1:5074 "
               "127.0.0.1:5084' for module IOCs on other CA ports of this host); this IOC "
               "serves on EPICS_CAS_INTF_ADDR_LIST and EPICS_CA_SERVER_PORT.")
    add_serving_arguments(p)
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="the module nodes' prefixes and positions, the module geometry "
                        "(default: 2x2 modules <prefix>N1: … <prefix>N4: of 6x6 chips of 256)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.verbose)
    logging.getLogger("caproto.ch").setLevel(logging.WARNING)  # a line per module PV otherwise
    try:
        config = load_config(args.config) if args.config else default_config(args.prefix)
    except PimegaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.prefix in (m.prefix for m in config.modules):
        print(f"{PROG}: {args.prefix} is a module node's prefix too: the array needs "
              "its own", file=sys.stderr)
        return 1
    group_class = ioc_class(config.layout.n_modules, RECON_WIDTH, NODE_STAGES)
    return run(PROG, args, group_class, lambda: ArrayNode(config),
               lambda node: "module IOCs " + ", ".join(m.prefix for m in config.modules))


if __name__ == "__main__":
    sys.exit(main())
