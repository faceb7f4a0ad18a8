"""Settings every service shares, read from `PJ_*` environment variables.

Token settings are not among them: see pj_common.token_settings (gateway and approvals only).
"""

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Only ever used when PJ_ENV=dev, so a developer machine runs with no setup at all.
MIN_SECRET_LENGTH = 32
DEV_JWT_SECRET = "pj-dev-secret-do-not-use-in-production-0123456789"
DEV_DISPATCH_SIGNING_KEY = "pj-dev-dispatch-signing-key-not-for-production-0123"


def describe_settings_error(exc: ValidationError) -> str:
    """The reasons settings were refused, without their values (which may be secrets)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                     for err in exc.errors(include_url=False, include_input=False, include_context=False))


class CommonSettings(BaseSettings):
    """Broker and logging settings every process shares. No token key: only the processes that verify
    tokens (TokenSettings) hold one, so the dispatcher, which talks to hostile upstream servers, holds none."""

    model_config = SettingsConfigDict(env_prefix="PJ_", extra="ignore", populate_by_name=True)

    env: Literal["dev", "prod"] = "prod"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # Every exchange and queue name starts with this; tests use a unique one per run.
    amqp_prefix: str = "pj"
    log_level: str = "INFO"
    # The largest message a consumer takes; a larger one is dead-lettered at once (reason `oversized`),
    # unread. Commands through the gateway are bounded by its body limit; this bounds direct publishers.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Each secret may come from a file named by `<ITS_ENV_NAME>_FILE` (mounted secrets)."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            if "SecretStr" not in str(field.annotation):
                continue
            alias = field.validation_alias
            env_names = list(alias.choices) if isinstance(alias, AliasChoices) else [f"PJ_{name.upper()}"]
            given = any(data.get(key) for key in [name, *map(str, env_names)])
            for env_name in env_names:
                path = os.environ.get(f"{env_name}_FILE")
                if path and not given:
                    try:
                        data[name] = Path(path).read_text().strip()
                    except OSError as exc:
                        raise ValueError(f"{env_name}_FILE: cannot read {path}: {exc.strerror}") from exc
        return data

    def secret_values(self) -> tuple[str, ...]:
        """Every secret these settings hold, to scrub from anything that leaves the process."""
        return tuple(v.get_secret_value() for v in self.__dict__.values()
                     if isinstance(v, SecretStr) and v.get_secret_value())


class DispatchSigningSettings(CommonSettings):
    """Settings of the processes that sign dispatch orders (approvals) or check them (dispatchers).

    The gateway does not inherit these: it never holds the key.
    """

    dispatch_signing_key: SecretStr | None = None

    @model_validator(mode="after")
    def _require_signing_key_outside_dev(self) -> "DispatchSigningSettings":
        key = self.dispatch_signing_key
        if key is not None and len(key.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"PJ_DISPATCH_SIGNING_KEY must be at least {MIN_SECRET_LENGTH} characters")
        if key is None:
            if self.env != "dev":
                raise ValueError("PJ_DISPATCH_SIGNING_KEY is not set: it is required unless PJ_ENV=dev "
                                 "(approvals signs dispatch orders with it and dispatchers check them)")
            self.dispatch_signing_key = SecretStr(DEV_DISPATCH_SIGNING_KEY)
        return self

    @property
    def signing_key(self) -> str:
        """The HMAC key of dispatch-order signatures."""
        assert self.dispatch_signing_key is not None  # set by the validator
        return self.dispatch_signing_key.get_secret_value()
