"""``pimega-ioc``: the areaDetector-style Channel Access IOC of one π-MEGA back-end node."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
from pathlib import Path

from caproto.asyncio.server import run
from caproto.server import PVGroup

from pimega.core.errors import PimegaError
from pimega.iocs import logfilter
from pimega.iocs.app import ioc_class
from pimega.iocs.factory import all_pv_names
from pimega.iocs.pva import pva_image
from pimega.runtime import NODE_STAGES
from pimega.sim.sender import SimConfig

from .main import add_geometry_arguments, layout_from
from .nodes import listening_node, replay_node, simulated_node

log = logging.getLogger("pimega.ioc")


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pimega-ioc", description=__doc__,
        epilog="Channel Access interface and port follow EPICS_CAS_INTF_ADDR_LIST and "
               "EPICS_CA_SERVER_PORT (caproto's defaults otherwise).")
    p.add_argument("--prefix", default="PIMEGA:", help="PV prefix $(P)$(R) (default PIMEGA:)")
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
    p.add_argument("--transport", choices=["tcp", "rdma"], default="tcp")
    p.add_argument("--data-root", action="append", metavar="DIR", dest="data_roots",
                   help="directory HDF1:FilePath must lie in (repeatable; default: the user's "
                        "home and the temporary directory)")
    p.add_argument("--list-pvs", action="store_true", help="print every PV and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def print_pv_list(group_class: type[PVGroup], prefix: str) -> None:
    for name, record, strings in all_pv_names(group_class, prefix):
        print(f"{name}\t{record}\t{'|'.join(strings)}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logfilter.install()
    layout = layout_from(args)
    group_class = ioc_class(layout.n_modules, NODE_STAGES)
    if args.list_pvs:
        print_pv_list(group_class, args.prefix)
        return 0
    if args.transport == "rdma":
        print("pimega-ioc: --transport rdma needs an RDMA device and pyverbs; none is "
              "available here, use --transport tcp", file=sys.stderr)
        return 2
    pva = None
    try:
        if args.listen:
            node = listening_node(layout, *args.listen)
        elif args.replay:
            node = replay_node(layout, args.replay, args.replay_rate)
        else:
            node = simulated_node(layout, SimConfig(layout=layout, pattern=args.pattern))
    except PimegaError as exc:
        print(f"pimega-ioc: {exc}", file=sys.stderr)
        return 1
    try:
        node.open()
        roots = args.data_roots or [str(Path.home()), tempfile.gettempdir()]
        ioc = group_class(prefix=args.prefix, node=node, data_roots=roots)
        log.info("files only under %s", ", ".join(roots))
        ioc.image.pva = pva = pva_image(args.prefix)
        print_welcome(args.prefix, layout.shape,
                      " + ".join(source.description for source in node.sources))
        # SIGTERM (docker stop, systemd) ends like Ctrl-C: the open file gets closed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        run(ioc.pvdb)
    except PimegaError as exc:
        print(f"pimega-ioc: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if pva is not None:
            pva.close()
        node.close()
    return 0


def print_welcome(prefix: str, shape: tuple[int, int], source: str) -> None:
    print(f"""
pi-MEGA IOC  prefix {prefix}  image {shape[1]}x{shape[0]}  source: {source}
  caget {prefix}cam1:DetectorState_RBV
  caput {prefix}cam1:ImageMode Multiple; caput {prefix}cam1:NumImages 10
  caput {prefix}HDF1:FilePath /tmp/; caput {prefix}HDF1:Capture 1 &
  caput -c -w 30 {prefix}cam1:Acquire 1
  screen: phoebus -settings opi/settings.ini -resource "opi/pimega_main.bob?P={prefix}&R=cam1:"
""", flush=True)


if __name__ == "__main__":
    sys.exit(main())
