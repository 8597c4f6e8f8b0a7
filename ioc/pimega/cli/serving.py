"""What ``pimega-ioc`` and ``pimega-array`` share: their serving options and their start-up.

Each command adds its own options to a parser that `add_serving_arguments` filled, builds its
root group class and its node, and hands both to `run`: ``--list-pvs``, the duplicate-prefix
check, access security, autosave, PV Access images, the welcome text, SIGTERM and the
Channel Access server are the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from caproto.server import PVGroup
from caproto.sync.client import read as ca_read

from pimega import __version__
from pimega.core.errors import PimegaError
from pimega.iocs import logfilter
from pimega.iocs.access import AccessContext, AccessPolicy, GroupMap
from pimega.iocs.app import PimegaIOC, pva_suffixes
from pimega.iocs.autosave import FILE_NAME, Autosave, default_directory, request_pvs
from pimega.iocs.circuit import PacedContext
from pimega.iocs.factory import all_pv_names
from pimega.iocs.pimega_specs import DEPTH_OF_STATE
from pimega.iocs.pva import pva_images
from pimega.runtime import NodeControl
from pimega.screens.db import AUTOSAVE_TOP, autosave_requests

log = logging.getLogger("pimega.ioc")

#: How long start-up looks for another IOC serving the same prefix.
PREFIX_SEARCH_S = 1.0


class ServedNode(NodeControl, Protocol):
    """The node an IOC serves: opened before the server starts, closed when it ends."""

    def open(self) -> Any: ...

    def close(self) -> None: ...


Node = TypeVar("Node", bound=ServedNode)


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every IOC command: prefix, data roots, access security, autosave,
    ``--list-pvs``, ``--version``, ``-v``."""
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--prefix", default="PIMEGA:", help="PV prefix $(P)$(R) (default PIMEGA:)")
    p.add_argument("--data-root", action="append", metavar="DIR", dest="data_roots",
                   help="directory HDF1:FilePath must lie in (repeatable; default: the user's "
                        "home and the temporary directory)")
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


def configure_logging(verbose: bool) -> None:
    """Log lines with time, level and logger; caproto's noisy tracebacks filtered."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logfilter.install()


def run(prog: str, args: argparse.Namespace, group_class: type[PimegaIOC],
        make_node: Callable[[], Node], source: Callable[[Node], str]) -> int:
    """Serve ``group_class`` over the node ``make_node()`` gives until Ctrl-C or SIGTERM
    (``--list-pvs``: print the PVs instead); ``source`` says where the node's frames come
    from. The exit status: 1, with the reason on stderr, if it cannot start."""
    if args.list_pvs:
        print_pv_list(group_class, args.prefix)
        return 0
    if served_elsewhere(args.prefix):
        print(f"{prog}: another IOC already serves {args.prefix}Heartbeat_RBV on this "
              "network: choose another --prefix, or stop that IOC", file=sys.stderr)
        return 1
    try:
        node = make_node()
        policy = AccessPolicy.load(args.access) if args.access else None
        groups = (GroupMap.parse(args.access_groups.read_text(), args.prefix,
                                 str(args.access_groups))
                  if args.access_groups else GroupMap(args.prefix, ()))
    except (PimegaError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    pva = autosave = None
    try:
        if not args.no_autosave:
            restore_counter_depth(node, args.prefix, args.autosave_dir)
        node.open()
        roots = args.data_roots or [str(Path.home()), tempfile.gettempdir()]
        ioc = group_class(prefix=args.prefix, node=node, data_roots=roots)
        log.info("files only under %s", ", ".join(roots))
        ioc.access.policy = policy
        if not args.no_autosave:
            ioc.autosave = autosave = autosave_for(ioc, args.prefix, args.autosave_dir,
                                                   node.layout.n_modules)
        ioc.pva = pva = pva_images(args.prefix, pva_suffixes())
        print_welcome(args.prefix, node.layout.shape, source(node))
        # SIGTERM (docker stop, systemd) ends like Ctrl-C: the open files get closed
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        asyncio.run(serve(ioc.pvdb, policy, groups))
    except PimegaError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        if pva is not None:
            pva.close()
        node.close()  # the data file first: the last settings save may wait on the disk
        if autosave is not None:
            autosave.close()
    return 0


def print_pv_list(group_class: type[PVGroup], prefix: str) -> None:
    for name, record, strings in all_pv_names(group_class, prefix):
        print(f"{name}\t{record}\t{'|'.join(strings)}")


def served_elsewhere(prefix: str) -> bool:
    """Whether an IOC answers for ``prefix`` already (a second one would make every client's
    search ambiguous: CA takes whichever answers first)."""
    try:
        ca_read(f"{prefix}Heartbeat_RBV", timeout=PREFIX_SEARCH_S, repeater=False)
    except (TimeoutError, OSError):
        return False
    return True


def restore_counter_depth(node: NodeControl, prefix: str, directory: Path | None) -> None:
    """The saved counter depth, before the PVs are built: ``image1:ArrayData``'s element type
    follows the depth the IOC starts at (decision 12); autosave restores the rest later."""
    path = (directory or default_directory(prefix)) / FILE_NAME
    saved = Autosave({}, (), path, prefix).read() or {}
    state = saved.get(f"{prefix}cam1:CounterDepth")
    if state in DEPTH_OF_STATE:
        node.configure(bit_depth=DEPTH_OF_STATE[state])


def autosave_for(ioc: PimegaIOC, prefix: str, directory: Path | None,
                 n_modules: int) -> Autosave:
    """Autosave of the settings the generated ``db/autosave`` request files list, in
    ``directory`` (None: the default one of ``prefix``)."""
    names = request_pvs(autosave_requests(n_modules), AUTOSAVE_TOP, {"P": prefix})
    directory = directory or default_directory(prefix)
    log.info("settings saved in %s", directory / FILE_NAME)
    return Autosave(ioc.pvdb, names, directory / FILE_NAME, prefix)


async def serve(pvdb: dict[str, Any], policy: AccessPolicy | None, groups: GroupMap) -> None:
    """Serve Channel Access, with access security when a policy is given (the context must
    be made inside the running event loop)."""
    context = AccessContext(pvdb, policy, groups) if policy else PacedContext(pvdb)
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
