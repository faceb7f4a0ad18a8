"""Where `pj` finds the gateway and the caller's token: a flag, else the environment (PJ_URL,
PJ_TOKEN), else the file `pj login` wrote, else the local default.

The file is `<config dir>/pj/config.json` (click's app dir: `$XDG_CONFIG_HOME/pj`, by default
`~/.config/pj`), written with mode 0600 in a 0700 directory: it holds a bearer token.
"""

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict, ValidationError

DEFAULT_URL = "http://127.0.0.1:8080"
FILE_MODE = 0o600
DIR_MODE = 0o700


class ConfigError(Exception):
    """The config file exists but cannot be read or written as a config (a usage error)."""


class SignIn(BaseModel):
    """How the stored token was had from an OpenID provider, and how to renew it (`pj login` device flow)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    issuer: str
    client_id: str
    token_endpoint: str
    refresh_token: str | None = None
    expires_at: float | None = None  # the access token's end, Unix time; None: unknown, never renewed early


class StoredConfig(BaseModel):
    """What `pj login` stores."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    url: str = DEFAULT_URL
    token: str | None = None
    sign_in: SignIn | None = None  # None: a pasted token, used until the gateway refuses it


@dataclass(frozen=True, slots=True)
class Profile:
    """The gateway and token a command uses, after flags, environment and file."""

    url: str
    token: str | None


def config_path() -> Path:
    """The config file of the current user (honours XDG_CONFIG_HOME)."""
    return Path(click.get_app_dir("pj")) / "config.json"


def load(path: Path) -> StoredConfig:
    """The stored config; the defaults when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return StoredConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return StoredConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ConfigError(f"{path} is not a pj config (run `pj login` again): "
                          f"{exc.errors(include_url=False)[0]['msg']}") from exc


def save(path: Path, config: StoredConfig) -> None:
    """Write the config readable by its owner only; replaced atomically, so a crash leaves the old one."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    # Created 0600 from the start (never briefly world-readable), whatever the umask.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an old .tmp file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(config.model_dump(exclude_none=True), indent=2) + "\n")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
    os.replace(partial, path)


def is_private(path: Path) -> bool:
    """True when no one but the owner may read or write the file."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def resolve(*, url: str | None, token: str | None, stored: StoredConfig) -> Profile:
    """Flags (and the environment, which typer reads into the same options) win over the file."""
    return Profile(url=(url or stored.url or DEFAULT_URL).rstrip("/"), token=token or stored.token)
