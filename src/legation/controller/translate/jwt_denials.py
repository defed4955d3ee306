"""What each native denial is called, and how it is answered: the service's status,
`WWW-Authenticate` and JSON body.

jwt_authn reports a failure as its message in the response code details; the RBAC filters report
the name of the policy that matched (translate/jwt.py names them in the service's order of
checks). `local_reply_config` maps each to the service's answer with a CEL filter on the details;
it runs for denials only, so it costs nothing on an allowed request. The realm comes from the
route's metadata (`legation.policy`), so one listener-wide config serves every policy.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm

from legation.api.v1alpha1.jwtpolicy import PolicySpec
from legation.controller.compiler.native import NativePolicy
from legation.controller.translate.jwt_checks import EMPTY, JWE, TOO_LARGE, TWICE
from legation.controller.translate.options import pack

__all__ = [
    "ALG_POLICY",
    "CRIT_POLICY",
    "IAT_POLICY",
    "METADATA_NAMESPACE",
    "claim_policy",
    "forwarded_claims",
    "local_reply_config",
    "unforwardable_policy",
]

METADATA_NAMESPACE = "legation"
"""Route metadata: `policy` is the realm of the local replies."""
_REALM = f"%METADATA(ROUTE:{METADATA_NAMESPACE}:policy)%"
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Policy names of the RBAC filter after jwt_authn, in the order of the service's checks: Envoy
# tries a DENY config's policies in the order of their names.
CRIT_POLICY = "1:crit"
ALG_POLICY = "2:alg"
IAT_POLICY = "3:iat"


def claim_policy(i: int, claim: str) -> str:
    return f"4:claim:{i:02d}:{claim}"


def unforwardable_policy(i: int, claim: str) -> str:
    return f"5:unforwardable:{i:02d}:{claim}"


def forwarded_claims(spec: PolicySpec) -> list[str]:
    """The claims the service forwards (as headers, then `sub`, `iss` and the metadata claims),
    in the order it checks them for control characters."""
    return list(dict.fromkeys([*spec.claims_to_headers, "sub", "iss", *spec.metadata_claims]))


# jwt_authn's failure (its message, spaces as underscores, in the response code details) → the
# service's (status, error, reason). Anything else jwt_authn refuses is a malformed token.
_JWT_FAILURES: tuple[tuple[str, int, str, str], ...] = (
    ("Jwt_is_missing", 401, "", "missing token"),
    ("Jwt_is_expired", 401, "invalid_token", "token expired"),
    ("Jwt_not_yet_valid", 401, "invalid_token", "token not yet valid"),
    ("Jwt_issuer_is_not_configured", 401, "invalid_token", "untrusted issuer"),
    ("Audiences_in_Jwt_are_not_allowed", 403, "insufficient_scope", "audience not allowed"),
    ("Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt", 401, "invalid_token", "unknown signing key"),
    ("Jwt_header_[alg]_is_not_supported", 401, "invalid_token", "signing algorithm not allowed"),
    ("Jwt_verification_fails", 401, "invalid_token", "invalid signature"),
    ("Jwt_ED25519_signature_is_wrong_length", 401, "invalid_token", "invalid signature"),
    ("Jwks_remote_fetch_is_failed", 503, "unavailable", "signing keys unavailable"),
)
_DENIED = "jwt_authn_access_denied{"


def local_reply_config(natives: tuple[NativePolicy, ...]) -> hcm.LocalReplyConfig | None:
    """The service's answers for native routes' denials; None when no policy is native."""
    if not natives:
        return None
    config = hcm.LocalReplyConfig()
    for detail, status, error, reason in _JWT_FAILURES:
        _mapper(config, f'response.code_details == "{_DENIED}{detail}}}"', status, error, reason)
    _mapper(config, f'response.code_details.startsWith("{_DENIED}")', 401, "invalid_token", "malformed token")
    _mapper(config, _rbac_detail(TWICE), 400, "invalid_request", "more than one token in the request")
    _mapper(config, _rbac_detail(EMPTY), 401, "", "missing token")
    _mapper(config, _rbac_detail(TOO_LARGE), 401, "invalid_token", "token too large")
    _mapper(config, _rbac_detail(JWE), 401, "invalid_token", "encrypted tokens (JWE) are not accepted")
    _mapper(config, _rbac_detail(CRIT_POLICY), 401, "invalid_token", "unsupported critical header")
    _mapper(config, _rbac_detail(ALG_POLICY), 401, "invalid_token", "signing algorithm not allowed")
    _mapper(config, _rbac_detail(IAT_POLICY), 401, "invalid_token", "token not yet valid")
    claims = {
        claim_policy(i, c): c for n in natives for r in n.policy.spec.rules for i, c in enumerate(r.claims)
    }
    for name, claim in sorted(claims.items()):
        _mapper(config, _rbac_detail(name), 403, "insufficient_scope", f"missing required {claim}")
    names = {
        unforwardable_policy(i, c): c for n in natives for i, c in enumerate(forwarded_claims(n.policy.spec))
    }
    for name, claim in sorted(names.items()):
        _mapper(config, _rbac_detail(name), 401, "invalid_token", f"claim {claim} holds control characters")
    return config


def _rbac_detail(policy: str) -> str:
    return f'response.code_details == "rbac_access_denied_matched_policy[{policy}]"'


def _mapper(config: hcm.LocalReplyConfig, expression: str, status: int, error: str, reason: str) -> None:
    mapper = config.mappers.add()
    mapper.filter.extension_filter.name = "envoy.access_loggers.extension_filters.cel"
    mapper.filter.extension_filter.typed_config.CopyFrom(
        pack(cel_pb2.ExpressionFilter(expression=expression))
    )
    mapper.status_code.value = status
    challenge = f'Bearer realm="{_REALM}"'
    if error and status < 500:  # a server-side failure is no error of the token (RFC 6750 §3.1)
        challenge += f', error="{error}", error_description="{reason}"'
    mapper.headers_to_add.add(
        header=base_pb2.HeaderValue(key="www-authenticate", value=challenge), append_action=_OVERWRITE
    )
    body = f'{{"error": "{error or "unauthorized"}", "reason": "{reason}"}}'
    mapper.body_format_override.CopyFrom(
        substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(inline_string=body), content_type="application/json"
        )
    )
