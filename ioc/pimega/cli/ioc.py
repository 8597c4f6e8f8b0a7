"""``pimega-ioc``: the areaDetector-style Channel Access IOC of one π-MEGA back-end node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from caproto.asyncio.server import Context
from caproto.server import PVGroup
from caproto.sync.client import read as ca_read

from pimega import __version__
from pimega.core.errors import ConfigError, PimegaError
from pimega.core.geometry import ArrayLayout
from pimega.iocs import logfilter
from pimega.iocs.access import AccessContext, AccessPolicy, GroupMap
from pimega.iocs.app import PimegaIOC, ioc_class, pva_suffixes
from pimega.iocs.autosave import FILE_NAME, Autosave, default_directory, request_pvs
from pimega.iocs.factory import all_pv_names
from pimega.iocs.pva import pva_images
from pimega.pipeline.backend import Backend, CpuBackend
from pimega.runtime import NODE_STAGES
from pimega.runtime.engine import Acquisition
from pimega.screens.db import AUTOSAVE_TOP, autosave_requests
from pimega.sim.sender import SimConfig

from .main import add_geometry_arguments, layout_from
from .nodes import RDMA_SIM_PORT, listening_node, rdma_node, replay_node, simulated_node

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
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    p.add_argument("--module-id", type=int, default=0, metavar="N",
                   help="with --sim: the array module this node stands for (0 top left, "
                        "row-major); the simulator sends that module's counter pattern")
    p.add_argument("--transport", choices=["tcp", "rdma"], default="tcp",
                   help="rdma: receive over RDMA (pyverbs and an RDMA device; --listen then "
                        "takes the address of the device's interface)")
    p.add_argument("--data-root", action="append", metavar="DIR", dest="data_roots",
                   help="directory HDF1:FilePath must lie in (repeatable; default: the user's "
                        "home and the temporary directory)")
    p.add_argument("--backend", choices=["auto", "cpu", "gpu"], default="cpu",
                   help="where the pipeline runs; auto takes the GPU when CuPy and a device "
                        "are there, else the CPU (default cpu)")
    p.add_argument("--access", type=Path, metavar="FILE.acf",
                   help="EPICS access security file (UAG, HAG, ASG/RULE); reload with "
                        "SIGHUP or $(P)AS:Reload. Without it every client may write")
    p.add_argument("--access-groups", type=Path, metavar="FILE",
                   help="lines 'PV-PATTERN ASG' putting PVs (names after the prefix, shell "
                        "patterns) in access security groups; the rest are in DEFAULT")
    p.add_argument("--autosave-dir", type=Path, metavar="DIR",
                   help="where settings are saved and restored from (default "
                        "$XDG_STATE_HOME/pimega/<prefix>, else ~/.local/state/pimega/<prefix>)")
    p.add_argument("--no-autosave", action="store_true",
                   help="neither restore nor save settings")
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
    group_class = ioc_class(layout.n_modules, layout.width, NODE_STAGES)
    if args.list_pvs:
        print_pv_list(group_class, args.prefix)
        return 0
    if served_elsewhere(args.prefix):
        print(f"pimega-ioc: another IOC already serves {args.prefix}Heartbeat_RBV on this "
              "network: choose another --prefix, or stop that IOC", file=sys.stderr)
        return 1
    pva = None
    try:
        backend = make_backend(args.backend)
        node = make_node(args, layout, backend)
        policy = AccessPolicy.load(args.access) if args.access else None
        groups = (GroupMap.parse(args.access_groups.read_text(), args.prefix,
                                 str(args.access_groups))
                  if args.access_groups else GroupMap(args.prefix, ()))
    except (PimegaError, OSError) as exc:
        print(f"pimega-ioc: {exc}", file=sys.stderr)
        return 1
    try:
        node.open()
        roots = args.data_roots or [str(Path.home()), tempfile.gettempdir()]
        ioc = group_class(prefix=args.prefix, node=node, data_roots=roots)
        log.info("files only under %s", ", ".join(roots))
        ioc.access.policy = policy
        if not args.no_autosave:
            ioc.autosave = autosave_for(ioc, args, layout.n_modules)
        ioc.pva = pva = pva_images(args.prefix, pva_suffixes())
        print_welcome(args.prefix, layout.shape,
                      " + ".join(source.description for source in node.sources))
        # SIGTERM (docker stop, systemd) ends like Ctrl-C: the open file gets closed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve(ioc.pvdb, policy, groups))
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


#: How long start-up looks for another IOC serving the same prefix.
PREFIX_SEARCH_S = 1.0


def served_elsewhere(prefix: str) -> bool:
    """Whether an IOC answers for ``prefix`` already (a second one would make every client's
    search ambiguous: CA takes whichever answers first)."""
    try:
        ca_read(f"{prefix}Heartbeat_RBV", timeout=PREFIX_SEARCH_S, repeater=False)
    except (TimeoutError, OSError):
        return False
    return True


def make_backend(name: str) -> Backend:
    """The backend asked for; ``auto`` falls back to the CPU, saying why."""
    if name == "cpu":
        return CpuBackend()
    from pimega.pipeline.gpu import GpuBackend

    try:
        return GpuBackend()
    except ConfigError as exc:
        if name == "gpu":
            raise
        log.warning("%s: the pipeline runs on the CPU", exc)
        return CpuBackend(notice=f"{exc}: running on the CPU")


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


def autosave_for(ioc: PimegaIOC, args: argparse.Namespace, n_modules: int) -> Autosave:
    """Autosave of the settings the generated ``db/autosave`` request files list."""
    names = request_pvs(autosave_requests(n_modules), AUTOSAVE_TOP, {"P": args.prefix})
    directory = args.autosave_dir or default_directory(args.prefix)
    log.info("settings saved in %s", directory / FILE_NAME)
    return Autosave(ioc.pvdb, names, directory / FILE_NAME, args.prefix)


async def serve(pvdb: dict[str, Any], policy: AccessPolicy | None, groups: GroupMap) -> None:
    """Serve Channel Access, with access security when a policy is given (the context must
    be made inside the running event loop)."""
    context = AccessContext(pvdb, policy, groups) if policy else Context(pvdb)
    await context.run()


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
