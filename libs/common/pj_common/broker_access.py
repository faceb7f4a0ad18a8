"""Least privilege on the broker: one RabbitMQ user per service, allowed what that service does and no more.

    python -m pj_common.broker_access show  [--prefix pj]                  the permissions, as a table
    python -m pj_common.broker_access apply [--prefix pj] [--users-file F]  create or update the users
    python -m pj_common.broker_access remove [--prefix pj]                  delete them

RabbitMQ grants each user three regular expressions per virtual host, matched against queue and exchange
names: configure (declare, delete), write (publish to an exchange; bind a queue as destination) and read
(consume from a queue; bind from an exchange). Publishing through the default exchange needs write on
`amq.default`, which reaches every queue, so each queue that several services feed is reached through an
exchange of its own (Topology.inlet), and only approvals may write to `amq.default` (it answers RPCs on
direct reply-to, which only the default exchange reaches). So, enforced by the broker:

- a dispatcher publishes lease requests and step reports, and dead-letters orders: no command, no order;
- the gateway (and any other client) publishes commands: no order, no report, no lease request;
- only approvals publishes dispatch orders and events, and only approvals declares the topology;
- the notifier declares and reads its own queue only (bound to the events), and dead-letters.

Passive declares need no permission, nor does consuming direct reply-to; what a forged message could still
do with a granted route is stopped by the receiver (commands carry tokens, reports and orders signatures).

`apply` imports the users and permissions together (an existing user's password and permissions are
replaced): with `rabbitmqctl import_definitions` on the broker's host, or with `--management-url` through
the management plugin's HTTP API (`POST /api/definitions`, as `--amqp-url`'s administrator; what Docker
Compose does). It then logs in as each user to see the import has taken effect. Each user's password is
taken from `PJ_AMQP_URL_<SERVICE>` in the environment, else from `--users-file`; only with a users file
are missing ones generated (and kept there: one line per service, `PJ_AMQP_URL_<SERVICE>=amqp://...`,
mode 0600, for `make run` to hand each process its own). Users are `<prefix>-<service>`, with
`@<vhost>` outside the default virtual host.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika

from .topology import Topology

NOTHING = "^$"
# Queues the broker names itself (exclusive, auto-deleted): the console's and `pj watch`'s event views.
SERVER_NAMED = r"amq\.gen-.*"
DEFAULT_EXCHANGE = "amq.default"
# How long an import may take to show (it is asynchronous): each user must log in within this.
LOGIN_TIMEOUT_S = 20.0


class Service(StrEnum):
    """Who connects to the broker; `client` is any other service sending commands (and `pj watch`)."""

    APPROVALS = "approvals"
    DISPATCHER = "dispatcher"
    GATEWAY = "gateway"
    NOTIFIER = "notifier"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Permissions:
    """A user's three regular expressions on one virtual host."""

    configure: str
    write: str
    read: str


def _any_of(topology: Topology, names: Sequence[str], prefix_pattern: str | None, *extra: str) -> str:
    """An anchored expression matching exactly `names` (each under topology.prefix) and `extra` (patterns).

    With `prefix_pattern`, the prefix part matches that pattern instead of the one prefix (test runs give
    one set of users every run's prefix)."""
    head = re.escape(topology.prefix) if prefix_pattern is None else prefix_pattern
    alternatives = [head + re.escape(name[len(topology.prefix):]) for name in names] + list(extra)
    return f"^({'|'.join(alternatives)})$" if alternatives else NOTHING


def permissions(service: Service, topology: Topology, *, prefix_pattern: str | None = None) -> Permissions:
    """What `service` may do on the broker (see the module docstring)."""
    t = topology

    def names(*items: str, extra: tuple[str, ...] = ()) -> str:
        return _any_of(t, items, prefix_pattern, *extra)

    match service:
        case Service.APPROVALS:
            return Permissions(
                configure=names(*t.declared_queues, *t.declared_exchanges),
                # Orders, events and dead letters; replies on direct reply-to (the default exchange);
                # each declared queue as a binding's destination.
                write=names(t.inlet(t.dispatch), t.events, t.dead_letter_exchange, *t.declared_queues,
                            extra=(re.escape(DEFAULT_EXCHANGE),)),
                # Its queues, the ones it declares with a dead-letter exchange, and each binding's source
                # (the dead-letter queue has no dead-letter exchange, and its depth is read passively).
                read=names(*t.inlet_queues, *(t.inlet(q) for q in t.inlet_queues), t.dead_letter_exchange))
        case Service.DISPATCHER:
            return Permissions(
                configure=NOTHING,
                write=names(t.inlet(t.leases), t.inlet(t.results), t.dead_letter_exchange),
                read=names(t.dispatch))
        case Service.NOTIFIER:
            return Permissions(
                configure=names(t.notifier),
                write=names(t.notifier, t.dead_letter_exchange),
                read=names(t.notifier, t.events))
        case Service.GATEWAY | Service.CLIENT:
            return Permissions(
                configure=f"^{SERVER_NAMED}$",
                write=names(t.inlet(t.commands), extra=(SERVER_NAMED,)),
                read=names(t.events, extra=(SERVER_NAMED,)))


def user_name(service: Service, user_prefix: str, vhost: str = "/") -> str:
    """`<prefix>-<service>`, and `@<vhost>` outside the default virtual host: users are the broker's, not a
    virtual host's, so two deployments with one prefix in two virtual hosts must not share (and reset
    each other's) users, nor reach each other's virtual host with one password."""
    return f"{user_prefix}-{service.value}" + ("" if vhost == "/" else f"@{vhost}")


def url_key(service: Service) -> str:
    """The users file's key for `service`'s AMQP URL."""
    return f"PJ_AMQP_URL_{service.value.upper()}"


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (`/` when its path is empty or `/`)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def with_credentials(amqp_url: str, user: str, password: str) -> str:
    """`amqp_url` logging in as `user`."""
    parts = urlsplit(amqp_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(topology: Topology, passwords: Mapping[Service, str], *, vhost: str, user_prefix: str,
                prefix_pattern: str | None = None) -> dict[str, list[dict[str, object]]]:
    """The users and permissions, in the broker's definitions format (`rabbitmqctl import_definitions`)."""
    users: list[dict[str, object]] = []
    grants: list[dict[str, object]] = []
    for service, password in passwords.items():
        name = user_name(service, user_prefix, vhost)
        users.append({"name": name, "password_hash": password_hash(password),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        granted = permissions(service, topology, prefix_pattern=prefix_pattern)
        grants.append({"user": name, "vhost": vhost, "configure": granted.configure, "write": granted.write,
                       "read": granted.read})
    return {"users": users, "permissions": grants}


def read_users_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def password_of(url: str | None, user: str) -> str | None:
    """The password `url` logs in with, if it logs in as `user` (both percent-decoded, as the broker sees
    them: `with_credentials` encodes the `@` of a user of another virtual host)."""
    if not url:
        return None
    parts = urlsplit(url)
    return unquote(parts.password) if unquote(parts.username or "") == user and parts.password else None


class BrokerAccessError(Exception):
    """The users could not be created or checked (the message says why)."""


def _post_definitions(management_url: str, amqp_url: str, body: dict[str, list[dict[str, object]]]) -> None:
    """Import through the management API, as the administrator `amqp_url` logs in as."""
    admin = urlsplit(amqp_url)
    credentials = base64.b64encode(f"{unquote(admin.username or '')}:{unquote(admin.password or '')}".encode())
    request = urllib.request.Request(f"{management_url.rstrip('/')}/api/definitions", method="POST",
                                     data=json.dumps(body).encode(), headers={
                                         "Content-Type": "application/json",
                                         "Authorization": f"Basic {credentials.decode()}"})
    try:
        with urllib.request.urlopen(request, timeout=30):
            return
    except (urllib.error.URLError, OSError) as exc:
        raise BrokerAccessError(f"the management API refused the definitions: {exc}") from exc


def _rabbitmqctl(*args: str, stdin: str | None = None) -> None:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise BrokerAccessError("rabbitmqctl is not on PATH: run this on the broker's host (or create the "
                                "users with `show`'s permissions another way)")
    done = subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BrokerAccessError(f"rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()[:500]}")


async def _wait_for_login(url: str, timeout_s: float) -> None:
    """The import is asynchronous: try logging in until it works or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = await aio_pika.connect(url, timeout=5)
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise BrokerAccessError(f"cannot log in as {urlsplit(url).username}: {exc!r}") from exc
            await asyncio.sleep(0.2)
            continue
        await connection.close()
        return


def apply(topology: Topology, amqp_url: str, *, user_prefix: str | None = None, prefix_pattern: str | None = None,
          users_file: Path | None = None, management_url: str | None = None,
          environ: Mapping[str, str] | None = None) -> dict[Service, str]:
    """Create or update each service's user; returns each service's AMQP URL (also written to `users_file`).

    A password is generated only where it is recorded (`users_file`): without one, each service's URL must
    be given (`environ`), so a running service's password is never replaced by one nobody knows.
    """
    prefix, vhost = user_prefix or topology.prefix, vhost_of(amqp_url)
    known = read_users_file(users_file) if users_file is not None else {}
    known |= {key: value for key, value in (environ or {}).items() if key in {url_key(s) for s in Service}}
    passwords = {service: password_of(known.get(url_key(service)), user_name(service, prefix, vhost))
                 for service in Service}
    missing = [f"{url_key(service)} (user {user_name(service, prefix, vhost)})"
               for service, password in passwords.items() if password is None]
    if missing and users_file is None:
        raise BrokerAccessError("no password known for " + ", ".join(missing) + ": set each URL with its user "
                                "and password, or give --users-file to have new passwords made and kept there")
    chosen = {service: password or secrets.token_urlsafe(24) for service, password in passwords.items()}
    body = definitions(topology, chosen, vhost=vhost, user_prefix=prefix, prefix_pattern=prefix_pattern)
    if management_url is not None:
        _post_definitions(management_url, amqp_url, body)
    else:
        # On standard input: the command may run as the broker's own system user, which could not read our
        # files, and no file of password hashes is left behind.
        _rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(body))
    urls = {service: with_credentials(amqp_url, user_name(service, prefix, vhost), password)
            for service, password in chosen.items()}

    async def check_all() -> None:
        await asyncio.gather(*(_wait_for_login(url, LOGIN_TIMEOUT_S) for url in urls.values()))

    asyncio.run(check_all())
    if users_file is not None:
        users_file.parent.mkdir(parents=True, exist_ok=True)
        users_file.touch(mode=0o600)
        users_file.chmod(0o600)
        users_file.write_text("".join(f"{url_key(service)}={url}\n" for service, url in urls.items()))
    return urls


def remove(user_prefix: str, vhost: str = "/") -> None:
    """Delete each service's user (in parallel: each rabbitmqctl call starts a VM of its own)."""
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        raise BrokerAccessError("rabbitmqctl is not on PATH")
    running = [subprocess.Popen([tool, "delete_user", user_name(s, user_prefix, vhost)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for s in Service]
    for process in running:
        process.wait(timeout=120)


def table(topology: Topology, vhost: str = "/") -> str:
    """The permissions of every service, one block each."""
    lines = []
    for service in Service:
        granted = permissions(service, topology)
        lines.append(f"{user_name(service, topology.prefix, vhost)}\n  configure {granted.configure}\n"
                     f"  write     {granted.write}\n  read      {granted.read}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pj_common.broker_access", description=__doc__.split("\n")[0])
    parser.add_argument("verb", choices=("show", "apply", "remove"))
    parser.add_argument("--prefix", default=os.environ.get("PJ_AMQP_PREFIX", "pj"))
    parser.add_argument("--amqp-url", default=os.environ.get("PJ_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
                        help="the broker and virtual host (its credentials are not used)")
    parser.add_argument("--users-file", type=Path, help="keep the services' AMQP URLs here (mode 0600)")
    parser.add_argument("--management-url", help="import through this management API instead of rabbitmqctl")
    args = parser.parse_args(argv)
    topology, vhost = Topology(args.prefix), vhost_of(args.amqp_url)
    try:
        if args.verb == "show":
            print(table(topology, vhost))
        elif args.verb == "remove":
            remove(topology.prefix, vhost)
        else:
            apply(topology, args.amqp_url, users_file=args.users_file, management_url=args.management_url,
                  environ=os.environ)
            print(f"broker users {', '.join(user_name(s, topology.prefix, vhost) for s in Service)} are set"
                  + (f" (URLs in {args.users_file})" if args.users_file else ""))
    except BrokerAccessError as exc:
        print(f"broker users not set: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
