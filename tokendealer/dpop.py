"""DPoP at the token endpoint (RFC 9449 §5): a token request's proof binds the issued token to the proof's key.

The proof is judged only once the client has authenticated (or its JWT bearer assertion has been accepted),
so a stranger's bad proof costs no signature check, and a bad proof is that request's failure alone: it is
not a failed authentication and never counts towards anyone's throttle.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from client_lib import exceptions as lib
from client_lib.core.dpop import Nonces, ProofCheck, replay_key, single_proof
from client_lib.jose import parse_dpop_proof

from .assertions import RedisReplayCache, ReplayCache
from .clients import Client
from .config import Config
from .errors import InvalidDPoPProof, UseDPoPNonce
from .messages import TokenRequest


def proof_check(config: Config, pepper: Callable[[], bytes]) -> ProofCheck:
    """The proof checks TOKENDEALER_DPOP_* configure; with nonces (§8), keyed by a secret derived from the
    pepper, which every instance of a deployment shares, so any instance accepts another's nonce."""
    nonces = None
    if config.dpop_nonce:
        nonces = Nonces(lambda: hmac.new(pepper(), b"tokendealer dpop nonce", hashlib.sha256).digest())
    return ProofCheck(config.dpop_max_age, config.dpop_max_skew, nonces)


class DPoPBinding:
    """RFC 9449 §4.3 and §5: checks a token request's proof against the token endpoint and returns the
    confirmation (`cnf`, §6.1) to put in the token; refuses a `require_dpop` client's request without one."""

    def __init__(
        self, token_endpoint: str, check: ProofCheck, replay: ReplayCache | RedisReplayCache, clock: Callable[[], float] = time.time
    ):
        self.token_endpoint = token_endpoint
        self.check = check
        self.replay = replay
        self.clock = clock

    def confirmation(self, request: TokenRequest, client: Client) -> dict[str, str] | None:
        """`{"jkt": thumbprint}` of the proof's key, None without a proof; InvalidDPoPProof (400) for a bad or
        replayed proof, UseDPoPNonce (400 with DPoP-Nonce) when a server nonce is required and missing."""
        try:
            proof_text = single_proof([request.dpop] if request.dpop is not None else [])
            if proof_text is None:
                if client.require_dpop:
                    # RFC 9449 §5.2 (dpop_bound_access_tokens): such a client's request without a proof is refused.
                    raise InvalidDPoPProof("this client must send a DPoP proof (RFC 9449) with each token request")
                return None
            proof = parse_dpop_proof(proof_text)
            self.check.check(proof, "POST", self.token_endpoint, self.clock())
        except lib.UseDPoPNonce as exc:
            raise UseDPoPNonce(str(exc), headers={"DPoP-Nonce": exc.nonce}) from None
        except lib.InvalidDPoPProof as exc:
            raise InvalidDPoPProof(str(exc)) from None
        name, jti = replay_key(proof)
        if not self.replay.first_use(name, jti, self.check.replay_until(proof)):
            raise InvalidDPoPProof("DPoP proof jti was already used")
        return {"jkt": proof.jkt}
