"""`pj`: the approval gate from a terminal, over the gateway's HTTP API (RabbitMQ for `dlq` and `watch --broker`).

Every command takes `--json` (the reply model as JSON on stdout, errors as JSON on stderr) and ends
with an exit status a script can branch on: 0 ok, 1 failed (a dispatch that ended dispatch_failed, a
server error), 2 usage, 3 not found, 4 conflict, 5 forbidden (or no valid token), 6 unavailable.
"""

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console, RenderableType

from pj_common.errors import ErrorCode
from pj_common.messages import ApprovalEvent, ApprovalStatus, DispatchOutcome

from . import render
from .api import error_body
from .config import ConfigError, Profile, SignIn, StoredConfig, config_path, load, resolve, save
from .credentials import current
from .errors import ClientError, ExitCode, NotFound, Unauthorized, Unavailable
from .http import AsyncGatewayClient, GatewayClient
from .payload import PayloadError, read_payload
from .progress import dispatch_live
from .signin import choose_provider, device_sign_in, gateway_sign_in

# The broker client (aio_pika), the token settings and JWT (cryptography) are imported by the commands
# that use them: every `pj` run pays for what it imports at start-up, and most runs need neither.
if TYPE_CHECKING:
    from pj_common.deadletters import DeadLetterQueue

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NO_PROVIDER = ("Signing in through an identity provider (OpenID device flow) needs one: neither --issuer "
               "(PJ_OIDC_ISSUER) nor the gateway's console names one. Paste a bearer token from your provider "
               "instead (on a development system, `pj token` prints one).")

app = typer.Typer(name="pj", no_args_is_help=True, rich_markup_mode="rich",
                  help="The approval gate from a terminal: request, review, approve, dispatch, watch.")
dlq_app = typer.Typer(no_args_is_help=True, help="Dead letters: list them, put them back on their queue.")
app.add_typer(dlq_app, name="dlq")

JsonOption = Annotated[bool, typer.Option("--json", help="Print the reply as JSON (errors as JSON on stderr).")]
AmqpUrlOption = Annotated[str, typer.Option("--amqp-url", envvar="PJ_AMQP_URL", show_default=False,
                                            help=f"RabbitMQ URL [default: {DEFAULT_AMQP_URL}]")]
PrefixOption = Annotated[str, typer.Option("--prefix", envvar="PJ_AMQP_PREFIX",
                                           help="The system's broker name prefix.")]


def complete_approval_ids(incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of an approval id: the newest the caller may see, with status and action."""
    try:
        profile = resolve(url=os.environ.get("PJ_URL"), token=os.environ.get("PJ_TOKEN"),
                          stored=load(config_path()))
        with GatewayClient(profile.url, profile.token, timeout=2.0) as gate:
            page = gate.list_approvals(limit=50)
    except (ClientError, ConfigError):
        return []  # completion offers nothing rather than an error in the middle of a command line
    return [(a.id, f"{a.approval_status} {a.action_id} by {a.operator_id}") for a in page.approvals
            if a.id.startswith(incomplete)]


ApprovalId = Annotated[str, typer.Argument(help="The approval's id.", show_default=False,
                                           autocompletion=complete_approval_ids)]


@dataclass(frozen=True, slots=True)
class Session:
    """The global options of one `pj` run."""

    url: str | None
    token: str | None

    def profile(self) -> Profile:
        # The file is read only for what flags and environment left open: a damaged one stops no script
        # that names both. Its token, when used, is renewed first if it has expired.
        if self.url and self.token:
            stored = StoredConfig()
        else:
            stored = load(config_path()) if self.token else current(config_path())
        return resolve(url=self.url, token=self.token, stored=stored)

    def gateway(self) -> GatewayClient:
        profile = self.profile()
        return GatewayClient(profile.url, profile.token)

    def async_gateway(self) -> AsyncGatewayClient:
        profile = self.profile()
        return AsyncGatewayClient(profile.url, profile.token)


def session_of(ctx: typer.Context) -> Session:
    obj = ctx.find_object(Session)
    assert obj is not None, "the root callback sets it"
    return obj


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", envvar="PJ_URL", show_default=False,
                                            help="The gateway's base URL [default: from `pj login`, "
                                                 "else http://127.0.0.1:8080]")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="PJ_TOKEN", show_default=False,
                                              help="Bearer token [default: from `pj login`]")] = None,
) -> None:
    """The approval gate from a terminal."""
    ctx.obj = Session(url=url, token=token)


def _fail(message: str, code: ExitCode, *, as_json: bool, error: ClientError | None = None) -> typer.Exit:
    if as_json:
        body = error_body(error) if error is not None else json.dumps({"success": False, "error": {
            "code": "usage", "message": message}})
        typer.echo(body, err=True)
    else:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]pj:[/] {message}", highlight=False)
    return typer.Exit(int(code))


def handled(command: Callable[P, None]) -> Callable[P, None]:
    """Turn the errors a command may meet into a message and the exit status of their outcome."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        as_json = bool(kwargs.get("as_json"))
        try:
            command(*args, **kwargs)
        except ClientError as exc:
            hint = " (run `pj login`)" if isinstance(exc, Unauthorized) else ""
            raise _fail(f"{exc}{hint}", exc.exit_code, as_json=as_json, error=exc) from None
        except (ConfigError, PayloadError) as exc:
            raise _fail(str(exc), ExitCode.USAGE, as_json=as_json) from None

    return run


def emit(model: BaseModel, human: RenderableType, *, as_json: bool) -> None:
    """The reply: as JSON (the wire form of the model) for scripts, as tables for people."""
    if as_json:
        typer.echo(model.model_dump_json(by_alias=True))
    else:
        Console().print(human)


# ---------------------------------------------------------------- signing in


def _claims(token: str) -> dict[str, Any]:
    """The token's claims, unverified: only to show whom it names (the gateway verified it)."""
    import jwt

    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return {key: claims[key] for key in ("sub", "role", "tenant", "exp") if key in claims}


@app.command()
@handled
def login(
    *,
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="The gateway's base URL to store.",
                                            show_default=False)] = None,
    token: Annotated[str | None, typer.Option("--token", help="The bearer token to store (no sign-in at the "
                                                              "identity provider).", show_default=False)] = None,
    issuer: Annotated[str | None, typer.Option("--issuer", envvar="PJ_OIDC_ISSUER", show_default=False,
                                               help="The OpenID provider to sign in with [default: the "
                                                    "gateway's, from its console configuration]")] = None,
    client_id: Annotated[str, typer.Option("--client-id", help="Your organisation's client for `pj` at the "
                                                              "provider (public, device flow).")] = "pj-cli",
    check: Annotated[bool, typer.Option(help="Ask the gateway whether it accepts the token first.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Sign in (OpenID device flow where your provider offers it, else a pasted token) and store the gateway's
    URL and your token in your config directory (mode 0600)."""
    session = session_of(ctx)
    path = config_path()
    target = (url or session.url or load(path).url).rstrip("/")
    err = Console(stderr=True, soft_wrap=True)
    sign_in: SignIn | None = None
    if not token:
        choice = choose_provider(gateway_sign_in(target), issuer=issuer, client_id=client_id)
        signed = device_sign_in(choice, err) if choice is not None else None
        if signed is not None:
            token, sign_in = signed
        else:
            if choice is None:
                err.print(NO_PROVIDER, highlight=False)
            token = str(typer.prompt("Bearer token", hide_input=True, err=True)).strip()
    if check:
        with GatewayClient(target, token) as gate:
            gate.count_pending()  # any authenticated read: a refused token fails here, before it is stored
    save(path, StoredConfig(url=target, token=token, sign_in=sign_in))
    result = {"url": target, "config": str(path), **({"issuer": sign_in.issuer} if sign_in else {}), **_claims(token)}
    if as_json:
        typer.echo(json.dumps(result))
    else:
        who = f" as {result['sub']} ({result.get('role')}, tenant {result.get('tenant')})" if "sub" in result else ""
        Console().print(f"Logged in to {target}{who}; saved in {path}", highlight=False)


@app.command("token")
@handled
def token_command(
    *,
    role: Annotated[str, typer.Option(help="The token's role: admin, approver, operator, viewer (or service).")
                    ] = "admin",
    sub: Annotated[str, typer.Option(help="The subject (user or service id).")] = "dev-admin",
    tenant: Annotated[str, typer.Option(help="The tenant.")] = "default",
    ttl: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 12 * 3600,
    as_json: JsonOption = False,
) -> None:
    """Development only: print a token signed with this machine's settings (PJ_ENV=dev, PJ_JWT_SECRET).

    Outside PJ_ENV=dev it refuses unless the signing key itself is in the environment (PJ_JWT_SECRET
    or PJ_JWT_SECRET_FILE): it never signs with the development key for another system.
    """
    from pj_common.auth import Role, mint_token
    from pj_common.settings import describe_settings_error
    from pj_common.token_settings import TokenSettings

    if role not in set(Role):
        raise typer.BadParameter(f"{role!r} is not one of {', '.join(Role)}", param_hint="--role")
    # Checked before the settings: outside dev they would only say that no key is set.
    key_given = bool(os.environ.get("PJ_JWT_SECRET") or os.environ.get("PJ_JWT_SECRET_FILE"))
    if os.environ.get("PJ_ENV", "prod") != "dev" and not key_given:
        raise _fail("token: minting tokens is for development systems (PJ_ENV=dev); elsewhere sign in through "
                    "your identity provider", ExitCode.FORBIDDEN, as_json=as_json)
    try:
        settings = TokenSettings()
    except ValidationError as exc:
        raise _fail(f"token: invalid configuration: {describe_settings_error(exc)}", ExitCode.USAGE,
                    as_json=as_json) from None
    try:
        key = settings.jwt_key
    except ValueError as exc:  # the system verifies with a public key: tokens come from its identity provider
        raise _fail(f"token: {exc}", ExitCode.USAGE, as_json=as_json) from None
    signed = mint_token(key, subject=sub, tenant=tenant, role=role, issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience, ttl_s=ttl)
    typer.echo(json.dumps({"token": signed}) if as_json else signed)


# ---------------------------------------------------------------- requests and decisions


@app.command()
@handled
def execute(
    *,
    ctx: typer.Context,
    action: Annotated[str, typer.Argument(help="The catalog action, e.g. notify.webhook.", show_default=False)],
    payload: Annotated[str | None, typer.Option("--payload", "-p", show_default=False,
                                                help="JSON object, @file.json, or @- for standard input.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; store nothing.")] = False,
    request_id: Annotated[str | None, typer.Option("--request-id", show_default=False,
                                                   help="Idempotency key: the same id again returns the "
                                                        "same approval (a retry is safe).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the approval id.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Ask for a governed action: a pending approval (or, for a launch-tier action, its outcome)."""
    body = read_payload(payload)
    with session_of(ctx).gateway() as gate:
        if dry_run:
            plan = gate.dry_run(action, body)
            emit(plan, render.dry_run(plan), as_json=as_json)
            return
        reply = gate.execute(action, body, request_id=request_id)
    if quiet and not as_json:
        typer.echo(reply.approval_id)
    elif isinstance(reply, DispatchOutcome):
        emit(reply, render.outcome(reply), as_json=as_json)
    else:
        emit(reply, render.accepted(reply), as_json=as_json)
    if isinstance(reply, DispatchOutcome) and reply.approval_status == ApprovalStatus.DISPATCH_FAILED:
        raise typer.Exit(int(ExitCode.FAILURE))


@app.command("list")
@handled
def list_command(
    *,
    ctx: typer.Context,
    status: Annotated[ApprovalStatus | None, typer.Option(help="Only this status.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Page size.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (newest first).")] = 0,
    as_json: JsonOption = False,
) -> None:
    """The approvals you may see, newest first."""
    with session_of(ctx).gateway() as gate:
        page = gate.list_approvals(status=status, limit=limit, offset=offset)
    emit(page, render.approvals_table(page), as_json=as_json)


@app.command()
@handled
def show(ctx: typer.Context, approval_id: ApprovalId, as_json: JsonOption = False) -> None:
    """One approval: payload, plan and hash, approval chain, dispatch result per step, audit trail."""
    with session_of(ctx).gateway() as gate:
        approval = gate.get_approval(approval_id)
        chain = None if as_json else gate.get_chain(approval_id)
    emit(approval, render.approval_detail(approval, chain), as_json=as_json)


@app.command()
@handled
def approve(
    *,
    ctx: typer.Context, approval_id: ApprovalId,
    note: Annotated[str | None, typer.Option("--note", "-n", help="Why (kept in the audit trail).",
                                             show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Approve (it stays pending while later stages or approvers are due). Never your own request."""
    with session_of(ctx).gateway() as gate:
        approval = gate.approve(approval_id, note=note)
    emit(approval, render.decided(approval), as_json=as_json)


@app.command()
@handled
def reject(
    *,
    ctx: typer.Context, approval_id: ApprovalId,
    note: Annotated[str, typer.Option("--note", "-n", help="Why (required; kept in the audit trail).",
                                      show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Reject, with a note saying why (one rejection rejects)."""
    if not note.strip():
        raise typer.BadParameter("a rejection needs a note saying why", param_hint="--note")
    with session_of(ctx).gateway() as gate:
        approval = gate.reject(approval_id, note=note)
    emit(approval, render.decided(approval), as_json=as_json)


async def _dispatch_live(session: Session, approval_id: str, *, wait: bool, timeout_s: float,
                         show: bool) -> DispatchOutcome:
    async with session.async_gateway() as gate:
        return await dispatch_live(gate, approval_id, wait=wait, timeout_s=timeout_s,
                                   console=Console(stderr=True), show=show)


@app.command()
@handled
def dispatch(
    *,
    ctx: typer.Context, approval_id: ApprovalId,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Each step as it would run; nothing changes.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the dispatch until it ends.")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="With --wait: give up watching after this many "
                                                       "seconds (the dispatch goes on).")] = 300,
    as_json: JsonOption = False,
) -> None:
    """Run an approved plan, with a live display of its steps; exit 1 if it ended dispatch_failed."""
    session = session_of(ctx)
    if dry_run:
        with session.gateway() as gate:
            result = gate.dispatch(approval_id, dry_run=True)
    else:
        try:
            result = asyncio.run(_dispatch_live(session, approval_id, wait=wait, timeout_s=timeout,
                                                show=not as_json))
        except KeyboardInterrupt:
            # Only the watching stops: a dispatch the gateway accepted runs to its end regardless.
            raise _fail(f"stopped watching; a dispatch already started goes on: `pj show {approval_id}`",
                        ExitCode.UNAVAILABLE, as_json=as_json) from None
    emit(result, render.outcome(result), as_json=as_json)
    if result.approval_status == ApprovalStatus.DISPATCH_FAILED:
        raise typer.Exit(int(ExitCode.FAILURE))


@app.command()
@handled
def health(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The gateway's health and what it checks behind it; exit 6 when it reports an error."""
    with session_of(ctx).gateway() as gate:
        report = gate.health()
    emit(report, render.health_table(report), as_json=as_json)
    if report.status == "error":
        raise typer.Exit(int(ExitCode.UNAVAILABLE))


# ---------------------------------------------------------------- events and dead letters


@dataclass(frozen=True, slots=True)
class WatchOptions:
    pattern: str
    tenant: str | None
    count: int | None
    seconds: float | None
    as_json: bool


def _event_source(session: Session, options: WatchOptions, *, broker: bool) -> AsyncGenerator[ApprovalEvent, None]:
    """Through the gateway (the caller's token and tenant), or straight from the broker's exchange."""
    from .events import approval_events
    from .sse import gateway_events

    err = Console(stderr=True, soft_wrap=True)
    if broker:
        amqp_url = os.environ.get("PJ_AMQP_URL", DEFAULT_AMQP_URL)
        prefix = os.environ.get("PJ_AMQP_PREFIX", "pj")
        return approval_events(amqp_url, prefix=prefix, pattern=options.pattern, tenant=options.tenant,
                               on_ready=lambda: err.print(f"watching {prefix}.events ({options.pattern}); "
                                                          "Ctrl-C stops", highlight=False))
    profile = session.profile()
    return gateway_events(profile.url, profile.token,
                          on_ready=lambda: err.print(f"watching {profile.url}/api/events ({options.pattern}); "
                                                     "Ctrl-C stops", highlight=False),
                          on_resync=lambda why: err.print(f"[yellow]events may have been missed:[/] {why}"))


async def _watch(options: WatchOptions, events: AsyncGenerator[ApprovalEvent, None]) -> None:
    from .events import topic_matches

    out = Console(soft_wrap=True)  # one line per event, however narrow the terminal
    shown = 0
    async with contextlib.aclosing(events):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(options.seconds):
                async for event in events:
                    if not topic_matches(options.pattern, event.type) or options.tenant not in (None, event.tenant_id):
                        continue
                    if options.as_json:
                        typer.echo(event.model_dump_json(by_alias=True))
                    else:
                        out.print(render.event_line(event), highlight=False)
                    shown += 1
                    if options.count is not None and shown >= options.count:
                        return


@app.command()
@handled
def watch(
    *,
    ctx: typer.Context,
    pattern: Annotated[str, typer.Option("--type", help="Event types, a topic pattern such as "
                                                        "approval.dispatch.*")] = "approval.#",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events.", show_default=False)] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many events.",
                                              show_default=False)] = None,
    seconds: Annotated[float | None, typer.Option("--for", min=0, help="Stop after this many seconds.",
                                                  show_default=False)] = None,
    broker: Annotated[bool, typer.Option("--broker", help="Read the broker's events exchange (every tenant; "
                                                          "PJ_AMQP_URL, PJ_AMQP_PREFIX) instead of the "
                                                          "gateway's stream (your token's tenant).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Lifecycle events as they happen, one line each."""
    options = WatchOptions(pattern=pattern, tenant=tenant, count=count, seconds=seconds, as_json=as_json)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(options, _event_source(session_of(ctx), options, broker=broker)))


async def _with_dead_letters(amqp_url: str, prefix: str, use: Callable[["DeadLetterQueue"], Awaitable[T]]) -> T:
    import aio_pika

    from pj_common.deadletters import DeadLetterQueue
    from pj_common.topology import Topology

    topology = Topology(prefix)
    try:
        connection = await aio_pika.connect(amqp_url, timeout=10, client_properties={"connection_name": "pj-dlq"})
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise Unavailable(ErrorCode.BROKER_UNAVAILABLE, f"cannot reach RabbitMQ: {type(exc).__name__}") from exc
    async with connection:
        try:
            return await use(DeadLetterQueue(connection, topology))
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise NotFound(ErrorCode.NOT_FOUND, f"no queue {topology.dead_letters}: has the system run with "
                                                f"PJ_AMQP_PREFIX={prefix}?") from exc


@dlq_app.command("list")
@handled
def dlq_list(
    *,
    amqp_url: AmqpUrlOption = DEFAULT_AMQP_URL,
    prefix: PrefixOption = "pj",
    limit: Annotated[int | None, typer.Option(min=1, help="Show only the oldest N (the whole queue is read).",
                                              show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """Dead letters, oldest first: id, original queue, reason, deliveries, age, last error (queue unchanged)."""
    now = time.time()
    letters = asyncio.run(_with_dead_letters(amqp_url, prefix, lambda dlq: dlq.read_letters(limit=limit, now=now)))
    if as_json:
        typer.echo(json.dumps([{**asdict(letter), "age_s": letter.age_s(now)} for letter in letters]))
    else:
        Console().print(render.dead_letters_table(letters, now=now))


@dlq_app.command("replay")
@handled
def dlq_replay(
    *,
    ids: Annotated[list[str] | None, typer.Option("--id", help="A dead letter's id (repeatable).",
                                                  show_default=False)] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter.")] = False,
    amqp_url: AmqpUrlOption = DEFAULT_AMQP_URL,
    prefix: PrefixOption = "pj",
    as_json: JsonOption = False,
) -> None:
    """Put dead letters back on their original queue (exit 3 if an id is not there, 1 if one stayed)."""
    if bool(ids) == every:
        raise typer.BadParameter("give --id ID (repeatable) or --all, not both")
    outcome = asyncio.run(_with_dead_letters(amqp_url, prefix, lambda dlq: dlq.replay(None if every else ids)))
    missing = sorted(set(ids or ()) - set(outcome.replayed) - set(outcome.skipped))
    if as_json:
        typer.echo(json.dumps({"replayed": outcome.replayed, "skipped": outcome.skipped, "missing": missing}))
    else:
        console = Console()
        for letter_id in outcome.replayed:
            console.print(f"replayed {letter_id}", highlight=False)
        for letter_id, why in outcome.skipped.items():
            console.print(f"[yellow]left {letter_id} in the dead-letter queue:[/] {why}", highlight=False)
        for letter_id in missing:
            console.print(f"[red]no dead letter {letter_id}[/]", highlight=False)
    if missing:
        raise typer.Exit(int(ExitCode.NOT_FOUND))
    if outcome.skipped:
        raise typer.Exit(int(ExitCode.FAILURE))


def main() -> None:
    """The `pj` console script."""
    app()
