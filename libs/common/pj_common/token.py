"""`python -m pj_common.token --role admin --sub alice --tenant acme`: print one signed JWT.

It signs with the same settings the services verify with (PJ_JWT_SECRET, issuer, audience). With a public key
or a JWKS URL configured there is no secret to sign with: tokens then come from the identity provider.
"""

import argparse
import sys

from pydantic import ValidationError

from .auth import Role, mint_token
from .settings import describe_settings_error
from .token_settings import TokenSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", default="admin", choices=[r.value for r in Role])
    parser.add_argument("--sub", default="dev-admin", help="the subject (user or service id)")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("--ttl", type=int, default=12 * 3600, help="lifetime in seconds")
    args = parser.parse_args(argv)
    try:
        settings = TokenSettings()
        key = settings.jwt_key
    except ValidationError as exc:
        sys.exit(f"token: invalid configuration: {describe_settings_error(exc)}")
    except ValueError as exc:
        sys.exit(f"token: {exc}")
    print(mint_token(key, subject=args.sub, tenant=args.tenant, role=args.role,
                     issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl_s=args.ttl))


if __name__ == "__main__":
    main()
