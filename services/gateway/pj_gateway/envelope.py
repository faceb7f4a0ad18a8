"""The HTTP envelopes, as models: what every response body looks like, for the OpenAPI document.

Responses are written straight from the reply models (`errors.success`, `errors.failure`); these
models describe them and are never used to validate a response a second time.
"""

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

DataT = TypeVar("DataT")


class Envelope(BaseModel, Generic[DataT]):
    """A success: the reply's data, and the correlation id that finds the request in the logs."""

    model_config = ConfigDict(extra="forbid")

    success: Literal[True] = True
    correlationId: str = Field(description="The request's `X-Correlation-Id` (sent or chosen), also in the logs")
    data: DataT


class ExecuteEnvelope(Envelope[DataT]):
    """An execute that stored an approval; `approvalId` and `approvalRequired` also stand at the top level."""

    approvalId: str
    approvalRequired: bool


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable error code (docs/commands.md#errors)")
    message: str


class ErrorEnvelope(BaseModel):
    """A failure: the stable code, a message for people, and the correlation id."""

    model_config = ConfigDict(extra="forbid")

    success: Literal[False] = False
    correlationId: str
    error: ErrorDetail
