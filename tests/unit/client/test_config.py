"""pj_client.config: the login file is private (0600 in a 0700 directory), and flags win over it."""

import os
import stat
from pathlib import Path

import pytest

from pj_client.config import (
    DEFAULT_URL,
    ConfigError,
    StoredConfig,
    config_path,
    is_private,
    load,
    resolve,
    save,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_file_lives_under_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == tmp_path / "pj" / "config.json"


def test_saved_with_mode_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "pj" / "config.json"
    old = os.umask(0o022)  # a typical umask would leave a new file world-readable
    try:
        save(path, StoredConfig(url="http://gate:8080", token="secret-token"))
    finally:
        os.umask(old)
    assert mode(path) == 0o600 and is_private(path)
    assert mode(path.parent) == 0o700
    assert load(path) == StoredConfig(url="http://gate:8080", token="secret-token")
    assert not list(path.parent.glob("*.tmp"))


def test_a_loose_file_becomes_private_when_saved_again(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"url": "http://old"}')
    path.chmod(0o644)
    (tmp_path / "config.json.tmp").write_text("left over")
    (tmp_path / "config.json.tmp").chmod(0o666)
    assert not is_private(path)
    save(path, StoredConfig(url="http://new", token="t"))
    assert mode(path) == 0o600
    assert load(path).url == "http://new"


def test_no_file_means_the_defaults(tmp_path: Path) -> None:
    assert load(tmp_path / "absent.json") == StoredConfig(url=DEFAULT_URL, token=None)


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not a pj config \(run `pj login` again\)"):
        load(path)


def test_flags_and_environment_win_over_the_file() -> None:
    stored = StoredConfig(url="http://stored:8080/", token="stored-token")
    assert resolve(url=None, token=None, stored=stored) == resolve(url="http://stored:8080", token="stored-token",
                                                                   stored=StoredConfig())
    given = resolve(url="http://flag:9000/", token="flag-token", stored=stored)
    assert (given.url, given.token) == ("http://flag:9000", "flag-token")
    assert resolve(url=None, token=None, stored=StoredConfig()).url == DEFAULT_URL
