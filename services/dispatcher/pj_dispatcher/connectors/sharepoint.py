"""SharePoint through Microsoft Graph: list items and small files, with an app-only (client credentials) token.

Idempotency: a list item carries the step key in its `PJStepKey` field (the list needs that text column,
ideally indexed) and is looked up by it before anything is created; a file is addressed by its path, so
writing it again writes the same bytes, and it is skipped when the stored item already has them.

Tenants: a drive may be shared by several tenants, so a file is written under `pj/<tenant>/` (see
`tenancy`): `reports/q1.csv` of tenant acme is `pj/acme/reports/q1.csv`, and no other tenant's step can
name, overwrite or report it. A list item is found only by its step key, which holds the approval's id
(a UUID approvals made and signed into the order), so one tenant's lookup never finds another's item.
"""

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from .base import ApiConnector, ConnectorError, Operation, StepContext, StepOutput, permanent, retryable
from .files import file_content
from .http_errors import classify_status, classify_transport, json_object
from .params import required_object, required_str, required_value
from .tenancy import tenant_prefix

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
TOKEN_MARGIN_S = 300.0  # a cached token is renewed this long before it expires
SIMPLE_UPLOAD_MAX_BYTES = 4 * 1024 * 1024  # Graph's limit for a PUT .../content; larger needs an upload session
STEP_KEY_FIELD = "PJStepKey"


def _odata_string(value: str) -> str:
    """An OData string literal: quoted, with single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


class SharePointConnector(ApiConnector):
    name = "sharepoint"

    def __init__(self, client: httpx.AsyncClient, *, graph_url: str, login_url: str, tenant_id: str | None,
                 client_id: str | None, client_secret: SecretStr | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._graph = graph_url.rstrip("/")
        self._login = login_url.rstrip("/")
        self._tenant_id = tenant_id
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._token: str | None = None
        self._previous_token: str | None = None
        self._token_renew_at = 0.0  # clock value after which the cached token is no longer used
        self._token_lock = asyncio.Lock()

    def missing_settings(self) -> list[str]:
        missing = []
        if not self._tenant_id:
            missing.append("MS_TENANT_ID")
        if not self._client_id:
            missing.append("MS_CLIENT_ID")
        if self._client_secret is None or not self._client_secret.get_secret_value():
            missing.append("MS_CLIENT_SECRET")
        return missing

    def operations(self) -> Mapping[str, Operation]:
        return {"create_list_item": self._create_list_item, "upload_file": self._upload_file}

    def secrets(self) -> tuple[str | None, ...]:
        secret = self._client_secret.get_secret_value() if self._client_secret is not None else None
        # The token before the current one too: a request that used it may fail after a renewal.
        return secret, self._token, self._previous_token

    # --- token ---------------------------------------------------------------------------------------------

    def _cached_token(self) -> str | None:
        if self._token is not None and self._clock() < self._token_renew_at:
            return self._token
        return None

    async def _access_token(self) -> str:
        """The cached token, or a new one; concurrent callers wait for a single request."""
        token = self._cached_token()
        if token is not None:
            return token
        async with self._token_lock:
            token = self._cached_token()
            if token is not None:
                return token
            return await self._fetch_token()

    async def _fetch_token(self) -> str:
        assert self._tenant_id and self._client_id and self._client_secret is not None  # missing_settings
        url = f"{self._login}/{quote(self._tenant_id, safe='')}/oauth2/v2.0/token"
        form = {"client_id": self._client_id, "client_secret": self._client_secret.get_secret_value(),
                "scope": GRAPH_SCOPE, "grant_type": "client_credentials"}
        requested_at = self._clock()
        try:
            response = await self._client.post(url, data=form)
        except httpx.HTTPError as exc:
            raise classify_transport(exc, "sharepoint token") from None
        if response.status_code in (400, 401):
            raise permanent("auth_failed", f"sharepoint token: HTTP {response.status_code}: {_token_error(response)}",
                            response.status_code)
        if not response.is_success:
            raise classify_status(response, "sharepoint token")
        try:
            body = response.json()
            token = body["access_token"]
            expires_in = float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise permanent("auth_failed", "sharepoint token: the token endpoint answered without a usable "
                                           "access_token", response.status_code) from None
        if not isinstance(token, str) or not token:
            raise permanent("auth_failed", "sharepoint token: empty access_token", response.status_code)
        self._previous_token, self._token = self._token, token
        self._token_renew_at = requested_at + expires_in - TOKEN_MARGIN_S
        return token

    # --- Graph requests ------------------------------------------------------------------------------------

    async def _graph_request(self, method: str, url: str, what: str, *, ok_404: bool = False,
                             headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One Graph call with the bearer token; failures become `ConnectorError`s (404 is returned if `ok_404`)."""
        token = await self._access_token()
        try:
            response = await self._client.request(
                method, url, headers={"Authorization": f"Bearer {token}", **(headers or {})}, **kwargs)
        except httpx.HTTPError as exc:
            raise classify_transport(exc, what) from None
        if response.status_code == 401:
            # The token was revoked or expired early: the next attempt gets a new one. It stays
            # known (only marked stale) so that `secrets()` still scrubs it from this error.
            if self._token == token:
                self._token_renew_at = float("-inf")
            raise retryable("auth_expired", f"{what}: HTTP 401 {_graph_error_detail(response)}; the token will be "
                                            "renewed", http_status=401)
        if response.is_success or (ok_404 and response.status_code == 404):
            return response
        error = classify_status(response, what)
        raise ConnectorError(error.code, f"{what}: HTTP {response.status_code} {_graph_error_detail(response)}",
                             retryable=error.retryable, retry_after=error.retry_after, http_status=response.status_code)

    # --- operations ----------------------------------------------------------------------------------------

    async def _create_list_item(self, ctx: StepContext) -> StepOutput:
        params, what = ctx.step.params, "sharepoint create_list_item"
        site_id = required_str(params, "siteId", what=what)
        list_id = required_str(params, "listId", what=what)
        fields = required_object(params, "fields", what=what)
        key = ctx.idempotency_key
        items_url = f"{self._graph}/sites/{quote(site_id, safe=',:/')}/lists/{quote(list_id, safe='')}/items"
        odata_filter = f"fields/{STEP_KEY_FIELD} eq {_odata_string(key)}"
        query = "$expand=fields&$filter=" + quote(odata_filter, safe="/'")
        found = await self._graph_request(
            "GET", f"{items_url}?{query}", "sharepoint find list item",
            headers={"Prefer": "HonorNonIndexedQueriesWarningMayFailRandomly"})
        existing = json_object(found, "sharepoint find list item").get("value") or []
        if existing:
            item = existing[0]
            return StepOutput(result=_item_result(item, created=False), http_status=found.status_code)
        response = await self._graph_request("POST", items_url, "sharepoint create list item",
                                             json={"fields": {**fields, STEP_KEY_FIELD: key}})
        return StepOutput(result=_item_result(json_object(response, "sharepoint create list item"), created=True),
                          http_status=response.status_code)

    async def _upload_file(self, ctx: StepContext) -> StepOutput:
        params, what = ctx.step.params, "sharepoint upload_file"
        drive_id = required_str(params, "driveId", what=what)
        file_name = required_str(params, "fileName", what=what)
        if "/" in file_name or "\\" in file_name or file_name in (".", ".."):
            raise permanent("invalid_params", f"{what}: param 'fileName' must be a plain file name, not {file_name!r}")
        folder = params.get("folder") or ""
        if not isinstance(folder, str) or ".." in folder.split("/"):
            raise permanent("invalid_params", f"{what}: param 'folder' must be a path string without '..'")
        content = file_content(required_value(params, "content", what=what))
        body, content_type = content.data, content.media_type
        if len(body) > SIMPLE_UPLOAD_MAX_BYTES:
            raise permanent("too_large", f"sharepoint upload_file: {len(body)} bytes is over the "
                                         f"{SIMPLE_UPLOAD_MAX_BYTES}-byte limit of a simple upload")
        sha256 = hashlib.sha256(body).hexdigest()
        path = tenant_prefix(ctx.tenant_id) + "/".join(part for part in (*folder.split("/"), file_name) if part)
        item_url = f"{self._graph}/drives/{quote(drive_id, safe='!')}/root:/{quote(path, safe='/')}"

        current = await self._graph_request("GET", item_url, "sharepoint get file", ok_404=True)
        if current.status_code != 404:
            item = json_object(current, "sharepoint get file")
            hashes = (item.get("file") or {}).get("hashes") or {}
            stored_sha = hashes.get("sha256Hash")
            # Graph gives sha256 only on some drives (business drives have quickXorHash): without it, upload again.
            if item.get("size") == len(body) and isinstance(stored_sha, str) and stored_sha.lower() == sha256:
                return StepOutput(result=_file_result(item, len(body), sha256, created=False),
                                  http_status=current.status_code)

        response = await self._graph_request("PUT", f"{item_url}:/content", "sharepoint upload file",
                                             content=body, headers={"Content-Type": content_type})
        return StepOutput(result=_file_result(json_object(response, "sharepoint upload file"), len(body), sha256,
                                              created=response.status_code == 201),
                          http_status=response.status_code)


def _graph_error_detail(response: httpx.Response) -> str:
    """Graph's `error.code: error.message`, or the start of the body when it is not Graph's error shape."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            return f"{error.get('code', '')}: {error.get('message', '')}"[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300]


def _token_error(response: httpx.Response) -> str:
    """The identity platform's `error: error_description` (first line; it appends trace ids)."""
    try:
        body = response.json()
        description = str(body.get("error_description", "")).splitlines()
        return f"{body.get('error', '')}: {description[0] if description else ''}"[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def _item_result(item: dict[str, Any], *, created: bool) -> dict[str, Any]:
    return {"itemId": item.get("id"), "webUrl": item.get("webUrl"), "created": created}


def _file_result(item: dict[str, Any], size: int, sha256: str, *, created: bool) -> dict[str, Any]:
    return {"itemId": item.get("id"), "webUrl": item.get("webUrl"), "size": item.get("size", size),
            "sha256": sha256, "created": created}
