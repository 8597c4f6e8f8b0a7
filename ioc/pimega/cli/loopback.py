"""Channel Access settings that keep a server and its clients on 127.0.0.1 (tests, bench)."""

from __future__ import annotations

import socket


def free_port(attempts: int = 50) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses one number for both): the
    system's next free TCP port, tried again while UDP has that number taken."""
    for _ in range(attempts):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both TCP and UDP on 127.0.0.1 in {attempts} tries")


def loopback_environment() -> dict[str, str]:
    """EPICS_CA_* / EPICS_PVA_* (and server) settings for servers and clients that meet on
    loopback only, on ports free now."""
    server_port, repeater_port, pva_port, pva_broadcast = (free_port() for _ in range(4))
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(server_port),
        "EPICS_CAS_SERVER_PORT": str(server_port),
        "EPICS_CA_REPEATER_PORT": str(repeater_port),
        "EPICS_CAS_BEACON_PORT": str(repeater_port),
        "EPICS_CA_MAX_ARRAY_BYTES": "100000000",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_SERVER_PORT": str(pva_port),
        "EPICS_PVAS_SERVER_PORT": str(pva_port),
        "EPICS_PVA_BROADCAST_PORT": str(pva_broadcast),
        "EPICS_PVAS_BROADCAST_PORT": str(pva_broadcast),
    }
