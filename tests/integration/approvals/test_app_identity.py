"""The approvals process verifying an identity provider's tokens: it fetches the JWKS when it starts (before
the first command), and enforces its service identities (PJ_SERVICE_PRINCIPALS) on real AMQP commands."""

import uuid

from aio_pika.abc import AbstractChannel, AbstractQueue

from pj_approvals.app import ApprovalsApp
from pj_approvals.settings import ApprovalsSettings
from pj_common.errors import ErrorCode
from pj_common.jwks import JwksKeys
from pj_common.messages import CountPending, ListApprovals, PendingCount, Reply
from pj_common.topology import Topology
from tests.integration.approvals.test_handlers import answer, ok
from tests.support.jwks_server import SigningKey, jwks_endpoint

ISSUER = "https://idp.test/realms/pj"




async def test_jwks_loaded_at_start_and_service_identities_enforced(
        database_url: str, amqp_url: str, topology: Topology, channel: AbstractChannel,
        inbox: AbstractQueue) -> None:
    key, tenant = SigningKey("idp-key-1"), f"t-{uuid.uuid4().hex[:8]}"
    with jwks_endpoint(key) as idp:
        settings = ApprovalsSettings(
            env="prod", database_url=database_url, amqp_url=amqp_url, amqp_prefix=topology.prefix,
            dispatch_signing_key="s" * 40, jwt_jwks_url=idp.url, jwt_issuer=ISSUER,
            service_principals={"report-bot": {"commands": ["count_pending"], "tenants": [tenant]}})
        app = ApprovalsApp(settings)
        await app.start()
        try:
            assert isinstance(app.verifier.keys, JwksKeys) and app.verifier.keys.key_ids == {"idp-key-1"}
            assert idp.fetches == 1  # at start, not on the first command
            token = key.token(subject="report-bot", tenant=tenant, role="service", issuer=ISSUER)
            counted = ok(await answer(app.handlers, channel, inbox, CountPending(), token), PendingCount)
            assert counted.pending_count == 0
            refused = Reply[None].model_validate_json(
                await answer(app.handlers, channel, inbox, ListApprovals(), token))
            assert refused.error is not None and refused.error.code == ErrorCode.FORBIDDEN
            assert idp.fetches == 1
        finally:
            await app.stop()
