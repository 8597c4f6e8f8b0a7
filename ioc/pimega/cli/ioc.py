"""``pimega-ioc``: the areaDetector-style Channel Access IOC of one π-MEGA back-end node."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from caproto.asyncio.server import run
from caproto.server import PVGroup

from pimega.core.errors import PimegaError
from pimega.iocs.app import ioc_class
from pimega.iocs.factory import all_pv_names
from pimega.iocs.pva import pva_image
from pimega.runtime.detector import SimulatedDetector
from pimega.runtime.engine import Acquisition
from pimega.sim.sender import SimConfig

from .main import add_geometry_arguments, layout_from

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
    add_geometry_arguments(p)
    p.add_argument("--pattern", choices=["counter", "phantom"], default="counter",
                   help="simulator pattern (with --sim)")
    p.add_argument("--transport", choices=["tcp", "rdma"], default="tcp")
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
    layout = layout_from(args)
    group_class = ioc_class(layout.n_modules)
    if args.list_pvs:
        print_pv_list(group_class, args.prefix)
        return 0
    if args.transport == "rdma":
        print("pimega-ioc: --transport rdma needs an RDMA device and pyverbs; none is "
              "available here, use --transport tcp", file=sys.stderr)
        return 2
    host, port = args.listen or ("127.0.0.1", 0)
    pva = None
    engine = Acquisition(layout, host=host, port=port)
    try:
        address = engine.open()
        if args.sim or not args.listen:
            detector = SimulatedDetector(*address, SimConfig(layout=layout, pattern=args.pattern))
            detector.connect()
            engine.attach_detector(detector)
            log.info("simulator connected: %d module(s) of %dx%d", layout.n_modules,
                     *layout.module.shape)
        ioc = group_class(prefix=args.prefix, engine=engine)
        ioc.image.pva = pva = pva_image(args.prefix)
        print_welcome(args.prefix, layout.shape, address, simulated=not args.listen)
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
        engine.close()
    return 0


def print_welcome(prefix: str, shape: tuple[int, int], address: tuple[str, int],
                  simulated: bool) -> None:
    source = "built-in simulator" if simulated else f"frames on {address[0]}:{address[1]}"
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
