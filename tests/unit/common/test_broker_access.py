"""The broker permissions of each service, and the URLs made for its user (no broker needed)."""

import base64
import hashlib
import re

from pj_common.broker_access import (
    Service,
    definitions,
    password_hash,
    password_of,
    permissions,
    user_name,
    vhost_of,
    with_credentials,
)
from pj_common.topology import Topology

SERVICES = tuple(Service)


def test_the_grants_name_only_this_prefix() -> None:
    """A user of prefix `pj` gets nothing of prefix `pjx` (or of `pj.x`-looking names elsewhere)."""
    t = Topology("pj")
    for service in SERVICES:
        granted = permissions(service, t)
        for expression in (granted.configure, granted.write, granted.read):
            assert not re.fullmatch(expression, "pjx.commands.in")
            assert not re.fullmatch(expression, "pj.commands.in.x")
    assert re.fullmatch(permissions(Service.DISPATCHER, t).write, "pj.leases.in")


def test_urls_keep_the_broker_and_virtual_host() -> None:
    url = with_credentials("amqp://guest:guest@10.0.0.5:5673/prod%2Fa", "pj-gateway", "p@ss/word")
    assert url == "amqp://pj-gateway:p%40ss%2Fword@10.0.0.5:5673/prod%2Fa"
    assert vhost_of(url) == "prod/a" and vhost_of("amqp://h/") == "/" and vhost_of("amqp://h") == "/"


def test_the_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = b"\x01\x02\x03\x04"
    assert base64.b64decode(password_hash("secret", salt)) == salt + hashlib.sha256(salt + b"secret").digest()


def test_definitions_hold_hashes_never_passwords() -> None:
    body = definitions(Topology("pj"), {Service.DISPATCHER: "s3cret-pass"}, vhost="/", user_prefix="pj")
    assert "s3cret-pass" not in repr(body)
    assert body["permissions"] == [{"user": "pj-dispatcher", "vhost": "/", "configure": "^$",
                                    "write": r"^(pj\.leases\.in|pj\.dispatch\.results\.in|pj\.dlx)$",
                                    "read": r"^(pj\.dispatch)$"}]


def test_a_prefix_pattern_grants_every_matching_prefix() -> None:
    granted = permissions(Service.GATEWAY, Topology("x"), prefix_pattern="pj[a-z]*-[0-9a-f]+")
    assert re.fullmatch(granted.write, "pje-0a1b.commands.in")
    assert not re.fullmatch(granted.write, "pj.commands.in")


def test_users_of_another_virtual_host_are_others() -> None:
    """Users are the broker's: one prefix in two virtual hosts must not share (and reset) one user."""
    assert user_name(Service.GATEWAY, "pj") == "pj-gateway"
    assert user_name(Service.GATEWAY, "pj", "staging") == "pj-gateway@staging"
    body = definitions(Topology("pj"), {Service.GATEWAY: "p"}, vhost="staging", user_prefix="pj")
    assert [u["name"] for u in body["users"]] == ["pj-gateway@staging"]
    assert body["permissions"][0]["vhost"] == "staging"


def test_a_url_made_for_a_user_gives_back_its_password() -> None:
    """The users file and the environment hold URLs: a user of another virtual host (`@` encoded in the
    URL) must find its password there again, not get a new one at each run."""
    for vhost in ("/", "staging"):
        user = user_name(Service.DISPATCHER, "pj", vhost)
        url = with_credentials("amqp://admin:x@127.0.0.1:5672/" + ("" if vhost == "/" else vhost), user, "p@ss:w/rd")
        assert password_of(url, user) == "p@ss:w/rd"
        assert password_of(url, user_name(Service.GATEWAY, "pj", vhost)) is None
