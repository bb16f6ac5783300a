"""A real nginx in front of ``nursery-pipes serve`` replicas, configured by the file we ship.

:func:`running_nginx` takes deploy/nginx/nursery-pipes.conf, replaces its upstream servers by
the given replicas and its listen address by a free loopback port, and runs it under a main
config of its own (everything nginx writes stays in the given prefix directory), as a
foreground process in a process session of its own; on exit it is stopped by pid and nothing
of it may remain. Used by tests/test_nginx_drain.py and benchmarks/bench_nginx.py.

The main config adds one thing the shipped file lacks: an ``X-Upstream`` response header
carrying ``$upstream_addr`` — every replica nginx tried for the call, in order — so a client
knows where its session ran (and whether nginx had to skip a replica first).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

ROOT = Path(__file__).resolve().parent.parent
SITE_CONF = ROOT / "deploy" / "nginx" / "nursery-pipes.conf"
UPSTREAM_HEADER = "x-upstream"
MISSING = (
    "nginx is not installed, and this test runs the real thing: `make setup` installs it "
    "(apt-get install nginx, with sudo when not root), or install it with your OS package manager"
)


def nginx_binary() -> str | None:
    """The nginx executable (Debian puts it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def site_config(text: str, replicas: Sequence[str], listen: str) -> str:
    """The shipped site config with its upstream servers replaced by ``replicas`` (each with
    the parameters of the file's first server line) and its listen address by ``listen``."""
    server_line = re.compile(r"^(\s*)server\s+[^\s;]+(\s[^;]*)?;\s*$", re.MULTILINE)
    first = server_line.search(text)
    assert first is not None, f"{SITE_CONF}: no `server host:port ...;` line in its upstream block"
    indent, params = first.group(1), first.group(2) or ""
    lines = "\n".join(f"{indent}server {replica}{params};" for replica in replicas)
    text = server_line.sub("", text)
    text = text[: first.start()] + lines + "\n" + text[first.start() :]
    text, listens = re.subn(r"^(\s*)listen\s+[^\s;]+", rf"\g<1>listen {listen}", text, flags=re.MULTILINE)
    assert listens == 1, f"{SITE_CONF}: expected one listen directive, found {listens}"
    return text


def main_config(prefix: Path, site: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} notice;
events {{ worker_connections 512; }}
http {{
{temp}
    log_format upstreams '$status|$upstream_addr|$upstream_status|$request_time';
    access_log {prefix / "access.log"} upstreams;
    add_header X-Upstream $upstream_addr always;
    include {site};
}}
"""


@dataclass(frozen=True)
class Call:
    """One line of the access log: the HTTP status, every replica nginx tried for the call in
    order (the last one served it) and what each answered (502: could not connect)."""

    status: int
    upstreams: list[str]
    upstream_statuses: list[str]
    seconds: float


@dataclass
class Nginx:
    process: trio.Process
    port: int
    prefix: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def calls(self) -> list[Call]:
        """Every call nginx finished, from its access log, in the order they ended."""
        calls = []
        for line in (self.prefix / "access.log").read_text().splitlines():
            status, upstreams, statuses, seconds = line.split("|")
            calls.append(Call(int(status), upstreams.split(", "), statuses.split(", "), float(seconds)))
        return calls

    def logs(self) -> str:
        """nginx's error and access logs (for a failing test's message)."""
        parts = []
        for name in ("stderr.log", "error.log", "access.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(prefix: Path, replicas: Sequence[str]) -> tuple[int, BinaryIO]:
    """Write the configs into ``prefix``; the port nginx will listen on, and its stderr file."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    port = _free_port()  # another process could take it first: then nginx says so, in the error
    site = prefix / "nursery-pipes.conf"
    site.write_text(site_config(SITE_CONF.read_text(), replicas, f"127.0.0.1:{port}"))
    (prefix / "nginx.conf").write_text(main_config(prefix, site))
    return port, open(prefix / "stderr.log", "wb")


@asynccontextmanager
async def running_nginx(prefix: Path, replicas: Sequence[str]) -> AsyncIterator[Nginx]:
    """nginx with the shipped config in front of ``replicas`` (``host:port``), on a free port."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError(MISSING)
    port, stderr = _prepare(prefix, replicas)
    with stderr:
        process = await trio.lowlevel.open_process(
            [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    nginx = Nginx(process, port, prefix)
    try:
        await _until_listening(nginx)
        yield nginx
    finally:
        await _stop(nginx)


async def _until_listening(nginx: Nginx) -> None:
    # nginx says nothing when it is ready; it listens before it writes its pid file, so the
    # first connection that succeeds is the sign.
    with trio.fail_after(10):
        while True:
            if nginx.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {nginx.process.returncode}:\n{nginx.logs()}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", nginx.port)
            except OSError:
                await trio.sleep(0.02)
                continue
            await stream.aclose()
            return


async def _stop(nginx: Nginx) -> None:
    """SIGTERM (nginx's fast shutdown) to the master, by pid; SIGKILL to its process group if it
    does not exit; then nothing of its session may remain."""
    from service_fixtures import assert_tree_gone

    process = nginx.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(10):
            await process.wait()
    if process.returncode is None:
        os.killpg(process.pid, signal.SIGKILL)  # the master and its worker: a group of our own
        await process.wait()
    await assert_tree_gone(process.pid)
