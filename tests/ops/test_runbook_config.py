"""docs/runbook.md's configuration table lists every setting the services read, with its default and service.

The settings come from the classes themselves (CommonSettings and every services/*/pj_*/settings.py), so a
setting added to the code and not to the runbook fails here.
"""

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from pj_common.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "runbook.md"
UNSET = "—"


@dataclass(frozen=True)
class Setting:
    env: str
    field: FieldInfo
    services: frozenset[str]  # {"all"} for CommonSettings


@dataclass(frozen=True)
class Row:
    default: str
    services: frozenset[str]
    meaning: str


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables pydantic-settings reads a field from."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [f"PJ_{name.upper()}"]


def settings_classes() -> dict[str, list[type[BaseSettings]]]:
    """Service name -> the settings classes its settings module defines."""
    found: dict[str, list[type[BaseSettings]]] = {}
    for path in sorted(ROOT.glob("services/*/pj_*/settings.py")):
        module = importlib.import_module(f"{path.parent.name}.settings")
        classes = [cls for cls in vars(module).values() if isinstance(cls, type)
                   and issubclass(cls, BaseSettings) and cls.__module__ == module.__name__]
        assert classes, f"{path.relative_to(ROOT)} defines no settings class"
        found[path.parent.name.removeprefix("pj_")] = classes
    return found


def all_settings() -> dict[str, Setting]:
    """Environment name -> the setting, over CommonSettings and every service's classes."""
    collected: dict[str, Setting] = {}
    for name, field in CommonSettings.model_fields.items():
        for env in env_names(name, field):
            collected[env] = Setting(env, field, frozenset({"all"}))
    for service, classes in settings_classes().items():
        for cls in classes:
            for name, field in cls.model_fields.items():
                if name in CommonSettings.model_fields:
                    continue
                for env in env_names(name, field):
                    known = collected.get(env)
                    services = known.services | {service} if known else frozenset({service})
                    collected[env] = Setting(env, field, services)
    return collected


def documented_default(field: FieldInfo) -> str:
    """How the table writes a field's default: `value`, or — when there is none."""
    value: Any = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{value:g}`"
    if isinstance(value, Path):
        return f"`{value.name}`"
    if isinstance(value, dict):
        return "`{}`"
    return f"`{value}`"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def config_table() -> tuple[dict[str, Row], str]:
    """Environment name -> its row of the runbook's configuration table, and the section's text."""
    text = section(RUNBOOK.read_text(), "## Configuration")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["Variable", "Default", "Service", "Meaning"], header
    rows: dict[str, Row] = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        assert len(cells) == 4, line
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
        assert names, f"a row without a variable: {line}"
        services = frozenset(s.strip() for s in cells[2].split(","))
        for name in names:
            assert name not in rows, f"{name} is in the table twice"
            rows[name] = Row(cells[1], services, cells[3])
    return rows, text


SETTINGS = all_settings()


def test_every_setting_is_in_the_table() -> None:
    rows, _ = config_table()
    missing = sorted(set(SETTINGS) - set(rows))
    assert not missing, f"settings the services read that docs/runbook.md's configuration table lacks: {missing}"


def test_the_table_lists_only_real_settings() -> None:
    rows, _ = config_table()
    stale = sorted(set(rows) - set(SETTINGS))
    assert not stale, f"the configuration table names variables no settings class reads: {stale}"


@pytest.mark.parametrize("env", sorted(SETTINGS))
def test_each_row_has_the_default_the_service_and_a_meaning(env: str) -> None:
    rows, _ = config_table()
    if env not in rows:
        pytest.fail(f"{env} is not in the configuration table")
    row, setting = rows[env], SETTINGS[env]
    assert row.services == setting.services, f"{env}: the table says {set(row.services)}"
    expected = documented_default(setting.field)
    assert row.default == expected or row.default.startswith(expected + " "), (
        f"{env}: default {row.default!r}, the code's is {expected}")
    assert len(row.meaning) > 10, f"{env}: say what it does"


def test_every_secret_may_come_from_a_file() -> None:
    """The note under the table names every secret (CommonSettings reads each from `<NAME>_FILE` too)."""
    _, text = config_table()
    (note,) = [paragraph for paragraph in text.split("\n\n") if "`<NAME>_FILE`" in paragraph]
    secrets = sorted(env for env, s in SETTINGS.items() if "SecretStr" in str(s.field.annotation))
    assert secrets
    missing = [env for env in secrets if f"`{env}`" not in note]
    assert not missing, f"secrets the _FILE note does not name: {missing}"
