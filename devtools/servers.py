"""
Throwaway servers on 127.0.0.1 for tests, the cluster harness and the benchmarks: a private PostgreSQL 15,
Redis (the Celery broker) and moto's server, each a subprocess in its own session (its own process group)
on a free port, in a temporary directory that ``stop`` removes; and the process handling they share
(:class:`Managed`: start in a new session with the output in a log file, stop by signal, kill what is left).

    with Postgres() as pg, Redis() as redis, MotoServer() as moto:
        ...  # pg.url, redis.url, moto.url

    python -m devtools.servers --port N    (moto's server, request logging off: MotoServer's default)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from devtools.sandbox import ROOT, free_port

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("CMDB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = Path(os.environ.get("CMDB_TEST_REDIS_SERVER", "/usr/bin/redis-server"))


class ClusterError(RuntimeError):
    """A component did not start, or a wait timed out; the message carries the tails of the logs."""


def postgres_available() -> bool:
    """Whether the PostgreSQL server binaries are installed."""
    return (PG_BIN / "initdb").exists() and (PG_BIN / "postgres").exists()


def redis_available() -> bool:
    """Whether Debian's ``redis-server`` (``make redis``) is installed."""
    return os.access(REDIS_SERVER, os.X_OK)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: Airflow puts each task runner in a group of its own."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) != sid:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if stat.rpartition(")")[2].split()[0] != "Z":
            members.append(int(entry))
    return members


def _kill_session(sid: int) -> None:
    """SIGKILL every process of a session until none is left (a dying parent may still fork)."""
    for _ in range(50):
        members = _session_members(sid)
        if not members:
            return
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    log.warning("session %s still has processes after SIGKILL: %s", sid, _session_members(sid))


@dataclass
class Managed:
    """A subprocess started in its own session (and process group), with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int = signal.SIGTERM
    log_offset: int = 0
    """Where this process's output starts in its log (a restarted component appends to the same file)."""

    def output(self) -> str:
        """What this process has written to its log so far."""
        with self.log_path.open("rb") as log_file:
            log_file.seek(self.log_offset)
            return log_file.read().decode(errors="replace")

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def signal_stop(self) -> None:
        """Send the stop signal to the whole process group (then :meth:`stop` waits)."""
        with contextlib.suppress(ProcessLookupError):
            # start_new_session=True: the leader's pid is the group and session id
            os.killpg(self.process.pid, self.stop_signal)

    def stop(self, timeout: float = 20.0) -> None:
        """Signal the whole process group, wait, then kill whatever is left of its session."""
        self.signal_stop()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing its session", self.name, timeout)
        # Children (executor workers, task runners in groups of their own) may outlive the leader.
        self.kill()

    def kill(self) -> None:
        """SIGKILL the leader and every process of its session at once, as when its machine dies."""
        _kill_session(self.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def spawn(
    name: str,
    cmd: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    *,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
    cwd: Path | None = None,
) -> Managed:
    """Start ``cmd`` in a session of its own, its output appended to ``log_path``."""
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as out:
        # Fixed commands of this harness (the PostgreSQL binaries, this interpreter running Airflow).
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            user=user,
            cwd=cwd,
        )
    return Managed(name, process, log_path, stop_signal, offset)


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    logs: Iterable[Managed] = (),
    interval: float = 0.5,
) -> None:
    """Poll ``check`` until it holds; fail at once when one of ``logs``' processes has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for managed in logs:
            if not managed.alive():
                raise ClusterError(
                    f"{managed.name} exited ({managed.process.returncode}) while waiting for {what}:\n"
                    f"{tail(managed.log_path)}"
                )
        try:
            if check():
                return
        except ClusterError:
            raise
        except Exception as err:  # not up yet
            log.debug("waiting for %s: %r", what, err)
        time.sleep(interval)
    tails = "\n".join(f"--- {m.name}\n{tail(m.log_path)}" for m in logs)
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")


class ThrowawayServer:
    """A server the tests start in a temporary directory; ``stop`` removes both."""

    dir: Path
    _server: Managed | None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        """The server process's id (for its CPU time)."""
        if self._server is None:
            raise ClusterError(f"{type(self).__name__} is not running")
        return self._server.process.pid

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.dir != Path() and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


class Postgres(ThrowawayServer):
    """
    A throwaway PostgreSQL server: ``initdb`` into a temporary directory (trust authentication), a unix
    socket in that directory, TCP on 127.0.0.1 at a free port. Runs as ``postgres`` when we are root
    (PostgreSQL refuses to run as root).
    """

    def __init__(self, database: str = "airflow", user: str = "airflow") -> None:
        self.database = database
        self.user = user
        self.port = 0
        self.dir = Path()
        self._server: Managed | None = None
        self._os_user: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Airflow (psycopg2)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            list(args), capture_output=True, text=True, check=False, user=self._os_user, timeout=120
        )
        if result.returncode:
            raise ClusterError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")

    def start(self) -> Self:
        """initdb, start the server, create the database."""
        if not postgres_available():
            raise ClusterError(f"PostgreSQL binaries not found in {PG_BIN}")
        self.dir = Path(tempfile.mkdtemp(prefix="cmdb-pg-"))
        if os.geteuid() == 0:
            self._os_user = "postgres" if _user_exists("postgres") else "nobody"
            entry = pwd.getpwnam(self._os_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self.dir.chmod(0o755)  # its logs are read by this (root) process
        data, sockets = self.dir / "data", self.dir / "sockets"
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(data),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        sockets.mkdir()
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        self._start_server()
        self._run(
            str(PG_BIN / "createdb"), "-h", str(sockets), "-p", str(self.port), "-U", self.user, self.database
        )
        return self

    def _start_server(self) -> None:
        self._server = spawn(
            "postgres",
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(self.dir / "data"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.dir / "sockets"),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            self.dir / "postgres.log",
            user=self._os_user,
            stop_signal=signal.SIGINT,  # PostgreSQL's "fast" shutdown
        )
        wait_for("PostgreSQL", self._ready, 60, [self._server])

    def restart(self, down: float = 0.0) -> float:
        """
        Restart the server as an operator would (fast shutdown: every client connection is cut, open
        transactions roll back), ``down`` seconds without a server, then start it on the same port and
        data. Returns how long the database was unreachable.
        """
        if self._server is None:
            raise ClusterError("PostgreSQL is not running")
        started = time.monotonic()
        self._server.stop(timeout=60)
        time.sleep(down)
        self._start_server()
        return time.monotonic() - started

    def _ready(self) -> bool:
        result = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0


# --------------------------------------------------------------------------------------------------
# Redis (the Celery broker)
# --------------------------------------------------------------------------------------------------


class Redis(ThrowawayServer):
    """
    A throwaway Redis server (Debian's ``redis-server``): 127.0.0.1 at a free port, no persistence (no
    RDB snapshots, no append-only file), its working directory a temporary one.
    """

    def __init__(self) -> None:
        self.port = 0
        self.dir = Path()
        self._server: Managed | None = None

    @property
    def url(self) -> str:
        """Celery broker URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        """Start the server and wait until it answers PING."""
        if not redis_available():
            raise ClusterError(f"redis-server not found at {REDIS_SERVER} (`make redis` installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="cmdb-redis-"))
        self.port = free_port()
        self._server = spawn(
            "redis",
            [
                str(REDIS_SERVER),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--protected-mode",
                "yes",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--daemonize",
                "no",
            ],
            self.dir / "redis.log",
        )
        wait_for("Redis", self._ready, 30, [self._server])
        return self

    def _ready(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# moto's server, as a process of its own
# --------------------------------------------------------------------------------------------------


class MotoServer(ThrowawayServer):
    """
    moto's server in a process of its own (its one interpreter lock measured and stopped on its own):
    ``python -m <module> --port N`` with ``env`` (default: this module, moto's server without request
    logging; ``tests.security.moto_iam_server`` runs it with IAM enforcement). Ready once ``/moto-api/``
    answers.
    """

    def __init__(self, module: str = __name__, env: Mapping[str, str] | None = None) -> None:
        self.module = module
        self.env = dict(os.environ if env is None else env)
        self.port = 0
        self.dir = Path()
        self._server: Managed | None = None

    @property
    def url(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Start the server and wait until it answers."""
        self.dir = Path(tempfile.mkdtemp(prefix="cmdb-moto-"))
        self.port = free_port()
        cmd = [sys.executable, "-m", self.module, "--port", str(self.port)]
        self._server = spawn("moto", cmd, self.dir / "moto.log", self.env, cwd=ROOT)
        wait_for("moto's server", self._ready, 60, [self._server], interval=0.1)
        return self

    def _ready(self) -> bool:
        urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).close()  # noqa: S310 - loopback, ours
        return True


def main(argv: list[str] | None = None) -> None:
    """moto's own server (werkzeug, threaded) on 127.0.0.1, without a log line per request."""
    parser = argparse.ArgumentParser(description="moto's server on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import main as moto_main

    moto_main(["-H", "127.0.0.1", "-p", str(args.port)])


if __name__ == "__main__":
    main()
