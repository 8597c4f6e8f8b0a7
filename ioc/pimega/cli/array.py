"""``pimega-array``: the IOC of a whole array, driving one module node's IOC per module.

It serves the PVs of a module node's IOC (``cam1:``, ``image1:``, ``HDF1:``, ``Stats1:``,
``ROI1:``, ``Pipe:``, ``Pva1:Image``) for the whole array, so clients drive the array as one
detector. The module IOCs are Channel Access servers like any other: this IOC finds them
through ``EPICS_CA_ADDR_LIST`` (each one's host and port) and serves on
``EPICS_CA_SERVER_PORT`` itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

from pimega.coordinator import ArrayNode, default_config, load_config
from pimega.core.errors import PimegaError
from pimega.iocs import logfilter
from pimega.iocs.access import GroupMap
from pimega.iocs.app import ioc_class, pva_suffixes
from pimega.iocs.pva import pva_images
from pimega.runtime import NODE_STAGES

from .ioc import autosave_for, print_pv_list, print_welcome, serve, served_elsewhere

log = logging.getLogger("pimega.array")

#: Width of the Recon: slices (the smallest caproto serves): the coordinator reconstructs
#: nothing, its nodes do.
RECON_WIDTH = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pimega-array", description=__doc__,
        epilog="Module IOCs are searched through EPICS_CA_ADDR_LIST (e.g. '127.0.0.1:5074 "
               "127.0.0.1:5084' for module IOCs on other CA ports of this host); this IOC "
               "serves on EPICS_CAS_INTF_ADDR_LIST and EPICS_CA_SERVER_PORT.")
    p.add_argument("--prefix", default="PIMEGA:", help="PV prefix of the array (default "
                   "PIMEGA:)")
    p.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="the module nodes' prefixes and positions, the module geometry "
                        "(default: 2x2 modules <prefix>N1: … <prefix>N4: of 6x6 chips of 256)")
    p.add_argument("--data-root", action="append", metavar="DIR", dest="data_roots",
                   help="directory HDF1:FilePath must lie in (repeatable; default: the user's "
                        "home and the temporary directory)")
    p.add_argument("--autosave-dir", type=Path, metavar="DIR",
                   help="where settings are saved and restored from (default "
                        "$XDG_STATE_HOME/pimega/<prefix>, else ~/.local/state/pimega/<prefix>)")
    p.add_argument("--no-autosave", action="store_true",
                   help="neither restore nor save settings")
    p.add_argument("--list-pvs", action="store_true", help="print every PV and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logfilter.install()
    logging.getLogger("caproto.ch").setLevel(logging.WARNING)  # a line per module PV otherwise
    try:
        config = load_config(args.config) if args.config else default_config(args.prefix)
    except PimegaError as exc:
        print(f"pimega-array: {exc}", file=sys.stderr)
        return 1
    if args.prefix in (m.prefix for m in config.modules):
        print(f"pimega-array: {args.prefix} is a module node's prefix too: the array needs "
              "its own", file=sys.stderr)
        return 1
    layout = config.layout
    group_class = ioc_class(layout.n_modules, RECON_WIDTH, NODE_STAGES)
    if args.list_pvs:
        print_pv_list(group_class, args.prefix)
        return 0
    if served_elsewhere(args.prefix):
        print(f"pimega-array: another IOC already serves {args.prefix}Heartbeat_RBV on this "
              "network: choose another --prefix, or stop that IOC", file=sys.stderr)
        return 1
    node = ArrayNode(config)
    pva = None
    try:
        node.open()
        roots = args.data_roots or [str(Path.home()), tempfile.gettempdir()]
        ioc = group_class(prefix=args.prefix, node=node, data_roots=roots)
        log.info("files only under %s", ", ".join(roots))
        if not args.no_autosave:
            ioc.autosave = autosave_for(ioc, args, layout.n_modules)
        ioc.pva = pva = pva_images(args.prefix, pva_suffixes())
        print_welcome(args.prefix, layout.shape,
                      "module IOCs " + ", ".join(m.prefix for m in config.modules))
        # SIGTERM (docker stop, systemd) ends like Ctrl-C: the nodes' files get closed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve(ioc.pvdb, None, GroupMap(args.prefix, ())))
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if pva is not None:
            pva.close()
        node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
