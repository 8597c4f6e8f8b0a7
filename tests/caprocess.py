"""Processes driven over stdin/stdout: the tiny IOC of `tests.tinyioc`, and Channel Access
clients that act as a given user (caproto's client sends ``getpass.getuser()``, which reads
``USER``/``LOGNAME``)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]

#: A client that answers, one ``reply <json>`` line each: ``rights PV`` (the access rights
#: the server sent), ``get PV``, ``put PV <json>`` (waits for the put to complete: "ok" or the
#: error) and ``send PV <json>`` (a put without notification: caproto's client sends it
#: whatever its rights, and the server must refuse it).
CLIENT = r"""
import json, sys
from caproto import ChannelType
from caproto.threading.client import Context

context = Context()
pvs = {}

def pv(name):
    if name not in pvs:
        (pvs[name],) = context.get_pvs(name, timeout=2.0)
        pvs[name].wait_for_connection(timeout=10)
    return pvs[name]

def plain(data):
    if getattr(data, "dtype", None) == "uint8":
        return bytes(data).rstrip(b"\0").decode()
    value = data[0]
    return value.decode() if isinstance(value, bytes) else getattr(value, "item", lambda: value)()

def write(name, text, **kwargs):
    value, channel = json.loads(text), pv(name)
    if isinstance(value, str) and channel.channel.native_data_type == ChannelType.ENUM:
        kwargs["data_type"] = ChannelType.STRING
    channel.write([value], **kwargs)

for line in sys.stdin:
    command, name, *rest = line.split(maxsplit=2)
    try:
        if command == "rights":
            reply = int(pv(name).access_rights)
        elif command == "get":
            reply = plain(pv(name).read(timeout=5).data)
        elif command == "put":
            write(name, rest[0], wait=True, timeout=3)
            reply = "ok"
        else:
            write(name, rest[0], wait=False, notify=False)
            reply = "sent"
    except Exception as exc:
        reply = f"{type(exc).__name__}: {exc}"
    print("reply", json.dumps(reply), flush=True)
"""


class ScriptProcess:
    """A Python process in the repository's root, its output (stdout and stderr) read line
    by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args], env=env, cwd=ROOT, text=True, bufsize=1,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, args=(self.popen.stdout,),
                                             daemon=True)
        self._pump_thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return "".join(self.output)

    def expect(self, start: str, timeout: float = 20.0) -> str:
        """The rest of the next output line that starts with ``start``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"no {start!r} within {timeout} s:\n{self.log()}") from None
            if line is None:
                raise AssertionError(f"process ended before {start!r}:\n{self.log()}")
            if line.startswith(start):
                return line[len(start):].strip()

    def ask(self, command: str) -> Any:
        """Send a `CLIENT` command; its reply."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()
        return json.loads(self.expect("reply "))

    def stop(self) -> None:
        """End the process as ``docker stop`` would: SIGTERM, then SIGKILL after 10 s."""
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self._pump_thread.join()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ScriptProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client(env: dict[str, str], user: str) -> ScriptProcess:
    """A `CLIENT` that tells servers it is ``user``."""
    return ScriptProcess("-c", CLIENT, env={**env, "USER": user, "LOGNAME": user})


def tiny_ioc(mode: str, path: Path | None, env: dict[str, str]) -> ScriptProcess:
    """`tests.tinyioc` serving in ``mode`` ("access", "autosave" with the file ``path``;
    "paced")."""
    return ScriptProcess("-m", "tests.tinyioc", mode, *([str(path)] if path else []), env=env)


def wait_for(ask: Callable[[], object], expected: object, timeout: float = 10.0) -> None:
    """Ask until the answer is ``expected``."""
    deadline = time.monotonic() + timeout
    while (answer := ask()) != expected:
        assert time.monotonic() < deadline, f"{answer!r}, not {expected!r}"
        time.sleep(0.1)
