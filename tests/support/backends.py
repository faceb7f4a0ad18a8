"""A private PostgreSQL cluster and a private RabbitMQ node on free ports of 127.0.0.1, in a temp dir.

The chaos suite restarts and stops its backends; these are its own, so the machine's shared servers
(127.0.0.1:5432 and :5672) are never touched. Both are removed again by `remove()`.
"""

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.system import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres() -> list[str]:
    """initdb refuses to run as root: run the cluster as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def missing_binaries() -> str | None:
    """Why private backends cannot start on this machine, or None."""
    if _pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql"
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        return f"rabbitmq-server not found in {RABBIT_BIN}"
    return None


class PrivatePostgres:
    """`initdb` + `pg_ctl` on a free port, trust auth for user postgres, sockets in its own dir."""

    def __init__(self) -> None:
        found = _pg_bin()
        assert found is not None, missing_binaries()
        self.bin: Path = found
        self.dir = Path(tempfile.mkdtemp(prefix="pjchaos-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run([*_as_postgres(), *args], check=True, timeout=timeout, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N",
                  "-E", "UTF8", "--locale=C")
        self.start()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                   "-c shared_buffers=64MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` (clients disconnected, clean checkpoint) or `immediate` (no checkpoint: crash recovery)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str) -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRabbit:
    """A RabbitMQ node of its own name, ports, data, logs, config and cookie; no plugins."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pjchaos-mq-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"pjchaos-{secrets.token_hex(3)}@localhost"
        (self.dir / "mnesia").mkdir()
        (self.dir / "log").mkdir()
        (self.dir / "enabled_plugins").write_text("")
        (self.dir / "rabbitmq-env.conf").write_text("")
        # Its own config file: the machine's /etc/rabbitmq/rabbitmq.conf names the shared node's port.
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
                                                "loopback_users = none\n")
        cookie = self.dir / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": d,  # where the CLI and the node find this node's cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{d}/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",
            "RABBITMQ_PID_FILE": f"{d}/pid",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _ctl(self, *args: str, timeout: float = 90) -> None:
        subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self._env(), check=True,
                       timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def start(self) -> float:
        """Start the node and wait until it serves AMQP; returns the seconds it took."""
        t0 = time.monotonic()
        subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self._env(), check=True,
                       timeout=60, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._ctl("wait", str(self.dir / "pid"), "--timeout", "90", timeout=100)
        return time.monotonic() - t0

    def stop(self) -> None:
        """Stop the node (and its Erlang VM), as an operator's `rabbitmqctl stop` does."""
        self._ctl("stop", str(self.dir / "pid"), timeout=60)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
