"""What every connector is: a named client of one external API that runs plan steps and
classifies its failures as retryable or permanent."""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pj_common.messages import PlanStep


@dataclass(frozen=True, slots=True)
class StepContext:
    """A step and the dispatch it belongs to (the ids make idempotency keys)."""

    approval_id: str
    tenant_id: str
    action_id: str
    step: PlanStep

    @property
    def idempotency_key(self) -> str:
        """`<approvalId>:<stepId>`: the same for every attempt at this step, new for any other."""
        return f"{self.approval_id}:{self.step.step_id}"


@dataclass(slots=True)
class StepOutput:
    result: dict[str, Any] = field(default_factory=dict)
    http_status: int | None = None


class ConnectorError(Exception):
    """A failed attempt: `retryable` ones are tried again (after `retry_after` if the API said so)."""

    def __init__(self, code: str, message: str, *, retryable: bool, retry_after: float | None = None,
                 http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.http_status = http_status

    def redacted(self, *secrets: str | None) -> "ConnectorError":
        """This error with every secret removed from its message, wherever the text came from."""
        self.message = redact(self.message, *secrets)
        self.args = (self.message,)
        return self


def permanent(code: str, message: str, http_status: int | None = None) -> ConnectorError:
    """An error the same request would meet again: the step fails at once."""
    return ConnectorError(code, message, retryable=False, http_status=http_status)


def retryable(code: str, message: str, *, retry_after: float | None = None,
              http_status: int | None = None) -> ConnectorError:
    """An error that may pass: the step is tried again, after `retry_after` when the API gave one."""
    return ConnectorError(code, message, retryable=True, retry_after=retry_after, http_status=http_status)


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every non-empty secret replaced by `***`, for messages, results and logs."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Connector(Protocol):
    """What the plan runner needs of a connector."""

    @property
    def name(self) -> str:
        """The name plan steps give as their `connector`."""
        ...

    def missing_settings(self) -> list[str]:
        """Names of the settings this connector still needs; empty when it is configured."""
        ...

    async def run(self, ctx: StepContext) -> StepOutput:
        """Perform the step's side effect once, or raise `ConnectorError`."""
        ...


Operation = Callable[[StepContext], Awaitable[StepOutput]]


class ApiConnector(ABC):
    """Base of the connectors: picks the step's operation and scrubs the connector's secrets from
    every error it raises, so no operation has to remember either."""

    name: ClassVar[str]

    @abstractmethod
    def operations(self) -> Mapping[str, Operation]:
        """Each operation this connector performs, by the name plan steps use (the catalog's names:
        `pj_common.connectors.CONNECTOR_OPERATIONS`, checked when the connectors are built)."""

    @abstractmethod
    def missing_settings(self) -> list[str]:
        """Names of the settings this connector still needs; empty when it is configured."""

    def secrets(self) -> tuple[str | None, ...]:
        """Every secret value this connector holds now (settings and tokens it obtained)."""
        return ()

    async def run(self, ctx: StepContext) -> StepOutput:
        """Perform the step's operation once, or raise `ConnectorError` (with no secret in it)."""
        operations = self.operations()
        operation = operations.get(ctx.step.operation)
        if operation is None:
            raise permanent("unsupported_operation", f"{self.name} has no operation {ctx.step.operation!r}; "
                                                     f"it has {', '.join(sorted(operations))}")
        try:
            return await operation(ctx)
        except ConnectorError as exc:
            exc.redacted(*self.secrets())
            raise
