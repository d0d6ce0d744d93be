"""client_lib.jose: the one algorithm table, JWKs, compact JWS parsing and the claim checker."""

from __future__ import annotations

import gc
import json
import re
import tracemalloc

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import JWKRegistry

from client_lib import (
    DisallowedAlgorithm,
    ExpiredToken,
    ImmatureToken,
    InvalidDPoPProof,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
    jose,
)
from client_lib.jose import (
    ACCESS_TOKEN_TYPES,
    ALGORITHMS,
    ClaimCheck,
    JwkError,
    VerificationKey,
    b64url,
    b64url_decode,
    checked_jwk_set,
    default_algorithm,
    jwk_thumbprint,
    key_algorithms,
    parse_dpop_proof,
    parse_jws,
    public_jwk,
    sign_dpop_proof,
    verification_keys,
    verify_signature,
)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (rsa.generate_private_key(65537, 2048), "RS256"),
        (ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
    ],
)
def test_kid_is_the_rfc7638_thumbprint_as_joserfc_computes_it(key, alg):
    jwk = public_jwk(key.public_key(), alg)
    assert jwk["kid"] == jwk_thumbprint(jwk) == JWKRegistry.import_key(jwk).thumbprint()
    assert (jwk["alg"], jwk["use"]) == (alg, "sig") and not {"d", "p", "q"} & set(jwk)


def test_one_algorithm_table_strict_for_every_user():
    """RSA keys verify RS256, RS512 and PS256 only; P-384, RS384, PS384, PS512 and anything symmetric never."""
    assert ALGORITHMS == ("ES256", "RS256", "RS512", "PS256", "EdDSA")
    assert key_algorithms({"kty": "RSA"}) == ("RS256", "RS512", "PS256")
    assert key_algorithms({"kty": "RSA", "alg": "PS512"}) == ()
    assert key_algorithms({"kty": "EC", "crv": "P-384"}) == ()
    assert key_algorithms({"kty": "oct"}) == ()
    assert key_algorithms({"kty": ["EC"], "crv": {"x": 1}}) == ()  # no TypeError on unhashable members


def test_default_algorithm_of_private_and_public_keys():
    for key, alg in ((ec.generate_private_key(ec.SECP256R1()), "ES256"), (ed25519.Ed25519PrivateKey.generate(), "EdDSA")):
        assert default_algorithm(key) == default_algorithm(key.public_key()) == alg
    with pytest.raises(ValueError, match="only EC P-256"):
        default_algorithm(ec.generate_private_key(ec.SECP384R1()))


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "private"},
        {"kty": "oct", "k": "c2VjcmV0"},
        "not an object",
        {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"},
    ],
)
def test_unusable_jwks_are_refused(jwk):
    with pytest.raises(JwkError):
        checked_jwk_set({"keys": [jwk]})
    assert verification_keys({"keys": [jwk]}) == {}


def test_a_jwk_for_encryption_or_with_a_bad_kid_is_refused():
    jwk = public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), "ES256")
    assert checked_jwk_set({"keys": [jwk]}) == {"keys": [jwk]}
    for bad in ({**jwk, "use": "enc"}, {**jwk, "kid": 7}):
        with pytest.raises(JwkError):
            checked_jwk_set({"keys": [bad]})
    assert list(verification_keys({"keys": [jwk, {**jwk, "kid": "enc", "use": "enc"}]})) == [jwk["kid"]]


def _token(key, alg: str, claims: dict, **header) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "at+jwt", **header})


def test_signature_pinned_to_the_key_algorithms():
    key = rsa.generate_private_key(65537, 2048)
    jwk = public_jwk(key.public_key(), "RS256")
    token = _token(key, "PS256", {"a": 1})
    with pytest.raises(DisallowedAlgorithm):
        verify_signature(parse_jws(token), VerificationKey.from_jwk(jwk))  # alg RS256 pins the key
    assert verify_signature(parse_jws(token), VerificationKey.from_jwk({k: v for k, v in jwk.items() if k != "alg"})) == {"a": 1}
    with pytest.raises(DisallowedAlgorithm, match="'RS384'"):
        parse_jws(_token(key, "RS384", {"a": 1}))


def test_parse_refuses_extensions_and_names_the_caller():
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(MalformedToken, match="^client_assertion uses JWS extensions"):
        parse_jws(_token(key, "ES256", {}, crit=["exp"], exp=1), noun="client_assertion")
    with pytest.raises(MalformedToken, match="^client_assertion header is not valid JSON"):
        parse_jws(f"{b64url(b'{,')}.{b64url(json.dumps({}).encode())}.", noun="client_assertion")
    assert parse_jws(_token(key, "ES256", {}), ACCESS_TOKEN_TYPES).alg == "ES256"


def test_a_kept_header_is_checked_like_a_new_one():
    """parse_jws keeps a decoded header by its text once it passed the checks that do not depend on the
    caller: the `typ` a caller asks for is still checked each time, and a refused header is never kept."""
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"a": 1}, key, algorithm="ES256", headers={"typ": "JWT"})
    assert parse_jws(token).unverified_claims() == {"a": 1}
    with pytest.raises(WrongTokenType):
        parse_jws(token, ACCESS_TOKEN_TYPES)
    unsigned = jwt.encode({"a": 1}, None, algorithm="none")
    for _ in range(2):
        with pytest.raises(DisallowedAlgorithm):
            parse_jws(unsigned)
    extended = _token(key, "ES256", {}, crit=["exp"], exp=1)
    for _ in range(2):
        with pytest.raises(MalformedToken, match="JWS extensions"):
            parse_jws(extended)
    long = _token(key, "ES256", {"a": 2}, x="x" * 2000)  # parsed, never kept: a header flood holds little
    assert parse_jws(long).unverified_claims() == {"a": 2} and long.split(".")[0] not in jose._HEADERS
    assert token.split(".")[0] in jose._HEADERS


def test_a_flood_of_made_up_headers_holds_little_however_they_are_written():
    """A header under the kept length can still decode to many objects (768 bytes of `[],` are 256 lists):
    only headers of a few string members (and a `jwk` of strings) are kept, so 4096 made-up ones hold a few
    MB, not ~70 MB of lists a full garbage collection walks (~17 MB for the 1000 made here)."""
    jose._HEADERS.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            header = json.dumps({"alg": "ES256", "kid": str(i), "x": [[]] * 240}, separators=(",", ":"))
            parse_jws(f"{b64url(header.encode())}.e30.AAAA")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 4_000_000, f"{held / 1e6:.0f} MB held by made-up headers"
    key = ec.generate_private_key(ec.SECP256R1())
    proof_like = _token(key, "ES256", {"a": 1}, typ="dpop+jwt", jwk={"kty": "EC", "crv": "P-256", "x": "x", "y": "y"})
    assert parse_jws(proof_like).unverified_claims() == {"a": 1} and proof_like.split(".")[0] in jose._HEADERS


def test_a_flood_of_made_up_dpop_proof_headers_holds_little():
    """A proof's key is kept by its header's text before the signature is checked: only short headers (an
    RSA key of 4096 bits fits), so proofs padded to 8 KB are not kept (1000 held ~8 MB, 4096 ~34 MB)."""
    jose._PROOF_KEYS.clear()
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {k: v for k, v in public_jwk(key.public_key(), "ES256").items() if k in ("kty", "crv", "x", "y")}
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "pad": f"{i:05}" + "p" * 5600}
            with pytest.raises(InvalidDPoPProof, match="signature"):
                parse_dpop_proof(f"{b64url(json.dumps(header).encode())}.e30.AAAA")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2_000_000, f"{held / 1e6:.0f} MB held by made-up proof headers"
    modulus = ((1 << 4095) | 1).to_bytes(512, "big")  # an RSA public key of 4096 bits, as its JWK reads
    header = b64url(json.dumps({"typ": "dpop+jwt", "alg": "PS256", "jwk": {"kty": "RSA", "n": b64url(modulus), "e": "AQAB"}}).encode())
    with pytest.raises(InvalidDPoPProof, match="signature"):
        parse_dpop_proof(f"{header}.e30.AAAA")
    assert header in jose._PROOF_KEYS


@pytest.mark.parametrize(
    "shape",
    [
        "{token}\n",  # a trailing newline is not base64url
        "{token}.",  # four segments
        "{header}..{signature}",  # no payload
        ".{payload}.{signature}",  # no header
        "{header}.{payload}=.{signature}",  # padding
        "{header}.{payload}.{signature}\u00e9",  # not ASCII
        "{header}.{payload}+/.{signature}",  # the standard base64 alphabet
        "{header}.{payload}.{signature}!",  # a character outside both alphabets, in any segment
        "{header}.{payload}!.{signature}",
        "{header}!.{payload}.{signature}",
        "{header}.{payload} .{signature}",
        "{header}.{payload}.{signature}=",
    ],
)
def test_only_the_compact_serialization_of_base64url_segments_is_parsed(shape):
    token = _token(ec.generate_private_key(ec.SECP256R1()), "ES256", {"a": 1})
    header, payload, signature = token.split(".")
    assert parse_jws(token).unverified_claims() == {"a": 1}
    with pytest.raises(MalformedToken, match="^token is not a compact JWS$"):
        parse_jws(shape.format(token=token, header=header, payload=payload, signature=signature))


@pytest.mark.parametrize("segment", ["QUJD!", "QU JD", "QUJD\n", "QUJD=", "QUJ+", "QUJ/", "Q", "QUJDR", "é"])
def test_base64url_decoding_refuses_what_is_not_unpadded_base64url(segment):
    # base64.urlsafe_b64decode would skip the odd character, or take standard base64 and its padding.
    with pytest.raises(ValueError):
        b64url_decode(segment)


@pytest.mark.parametrize("data", [b"", b"A", b"AB", b"ABC", bytes(range(256)), b"\xfb\xff\xbf"])
def test_base64url_decoding_inverts_the_encoding(data):
    assert b64url_decode(b64url(data)) == data


_B64URL_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from("AQw09-_+/=.! \n\u00e9"), max_size=12) | st.binary(max_size=40).map(b64url))
def test_base64url_decoding_accepts_exactly_unpadded_base64url(segment):
    # RFC 4648 §5 without padding: the alphabet, and no length of 1 more than a multiple of 4.
    valid = _B64URL_SEGMENT.fullmatch(segment) is not None and len(segment) % 4 != 1
    try:
        data = b64url_decode(segment)
    except ValueError:
        assert not valid
    else:
        assert valid and len(data) == len(segment) * 3 // 4


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mutated_token_is_parsed_or_refused_as_a_token(data):
    token = _token(ec.generate_private_key(ec.SECP256R1()), "ES256", {"a": 1, "b": [1, {"c": "d"}]})
    position = data.draw(st.integers(0, len(token)))
    inserted = data.draw(st.text(alphabet=st.sampled_from("A.-_+/=!{}\u00e9 "), max_size=3))
    cut = data.draw(st.integers(0, 3))
    mutated = token[:position] + inserted + token[position + cut :]
    try:
        claims = parse_jws(mutated).unverified_claims()
    except InvalidToken:
        return
    assert isinstance(claims, dict)


def test_a_payload_with_whitespace_around_its_json_is_still_read():
    header = b64url(json.dumps({"alg": "ES256"}).encode())
    for text in (' {"a":1}', '{"a":1} ', '\n{"a":1}\n'):
        assert parse_jws(f"{header}.{b64url(text.encode())}.AAAA").unverified_claims() == {"a": 1}
    with pytest.raises(MalformedToken, match="payload is not valid JSON"):
        parse_jws(f"{header}.{b64url(b'{}x')}.AAAA").unverified_claims()


def test_claim_check_with_injected_clock_leeway_and_skew():
    now = 1_800_000_000
    check = ClaimCheck(issuer="https://i", audience="api", required=("exp", "iat"), strings=("jti",), leeway=30, skew=1)
    good = {"iss": "https://i", "aud": ["x", "api"], "iat": now, "nbf": now, "exp": now + 60, "jti": "j"}
    check.check(good, now)
    check.check(good, now + 60 + 29)  # within leeway
    cases = [
        ({**good, "exp": now - 31}, ExpiredToken, "token has expired"),
        ({**good, "nbf": now + 32}, ImmatureToken, "token is not valid yet"),
        ({**good, "iat": now + 32}, ImmatureToken, "token iat is in the future"),
        ({**good, "iss": "https://evil"}, WrongIssuer, "issuer"),
        ({**good, "aud": "other"}, WrongAudience, "audience"),
        ({**good, "exp": True}, MissingClaim, "token exp is not a number"),
        ({**good, "jti": ""}, MissingClaim, "jti"),
        ({k: v for k, v in good.items() if k != "iat"}, MissingClaim, "token lacks the iat claim"),
    ]
    for claims, error, text in cases:
        with pytest.raises(error, match=text):
            check.check(claims, now)
    check.check({**good, "nbf": now + 31}, now)  # leeway + skew
    own = ClaimCheck(required=("exp",), skew=1, noun="client_assertion")
    with pytest.raises(ExpiredToken, match="^client_assertion has expired$"):
        own.check({"exp": now}, now)


def test_a_proof_key_kept_by_its_header_never_skips_the_signature():
    """parse_dpop_proof keeps the key read from a header by the header's text; a proof carrying one key's
    header but another key's signature is still refused, and each key keeps its own thumbprint."""
    first, second = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    claims = {"jti": "j", "htm": "POST", "htu": "https://as.example/token", "iat": 1}
    a1, a2 = sign_dpop_proof(first, "ES256", claims), sign_dpop_proof(first, "ES256", {**claims, "jti": "k"})
    b = sign_dpop_proof(second, "ES256", claims)
    assert parse_dpop_proof(a1).jkt == parse_dpop_proof(a2).jkt == public_jwk(first.public_key(), "ES256")["kid"]
    assert parse_dpop_proof(b).jkt == public_jwk(second.public_key(), "ES256")["kid"]
    forged = a1.split(".")[0] + "." + ".".join(b.split(".")[1:])
    with pytest.raises(InvalidDPoPProof):
        parse_dpop_proof(forged)


def test_rsa_keys_under_2048_bits_are_refused():
    """RFC 7518 §3.3: RS256/PS256 keys MUST be at least 2048 bits; a registered JWK Set or a DPoP proof's jwk
    with a smaller one is refused."""
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(JwkError, match="at least 2048"):
        VerificationKey.from_jwk(public_jwk(small.public_key(), "RS256"))
    claims = {"jti": "j", "htm": "POST", "htu": "https://as.example/token", "iat": 1}
    with pytest.raises(InvalidDPoPProof, match="2048"):
        parse_dpop_proof(sign_dpop_proof(small, "RS256", claims))
    assert VerificationKey.from_jwk(public_jwk(rsa.generate_private_key(65537, 2048).public_key(), "RS256")).algorithms
