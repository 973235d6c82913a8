"""Verify a Nitro attestation document (nitro-facts §2.4; AWS "Verifying the root of trust").

    from fake_nsm.aws_root import AWS_NITRO_ROOT_G1_PEM
    from fake_nsm.verifier import verify_attestation_document

    document = verify_attestation_document(
        data, trusted_roots=[AWS_NITRO_ROOT_G1_PEM], nonce=my_nonce,
        expected_pcrs={0: pcr0_hex}, max_age=timedelta(minutes=5),
    )

Checks, in order: COSE envelope and ES384 header; payload syntax and sizes (§2.1); anchor
(``cabundle[0]`` is a pinned root); certificate structure; validity of every certificate at
``at``; the COSE signature with the leaf key; the chain's signatures (skipped when the same
chain already verified: :class:`~fake_nsm.cert_chain.ChainCache`); debug mode; PCRs; nonce;
freshness. The first failure raises its :class:`~fake_nsm.errors.VerificationError`
subclass; nothing else escapes.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone

from fake_nsm.cert_chain import (
    ChainCache,
    ParsedChain,
    chain_key,
    check_validity,
    parse_chain,
    verify_chain_signatures,
)
from fake_nsm.cose import decode_cose_sign1
from fake_nsm.document import AttestationDocument
from fake_nsm.document_parser import parse_attestation_payload
from fake_nsm.errors import (
    DebugModeError,
    FutureDocumentError,
    NonceMismatchError,
    PcrMismatchError,
    StaleDocumentError,
    UntrustedRootError,
    VerificationInputError,
)
from fake_nsm.trusted_roots import TrustedRoot, fingerprint, resolve_trusted_roots

__all__ = [
    "DEFAULT_CHAIN_CACHE",
    "DEFAULT_CLOCK_SKEW",
    "read_unverified_document",
    "verify_attestation_document",
]

#: How far in the future (relative to ``at``) a document's timestamp may be.
DEFAULT_CLOCK_SKEW = timedelta(seconds=60)
#: The process-wide cache of chains whose signatures verified.
DEFAULT_CHAIN_CACHE = ChainCache()

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


def verify_attestation_document(
    data: bytes,
    *,
    trusted_roots: Sequence[TrustedRoot] | TrustedRoot,
    at: datetime | None = None,
    expected_pcrs: Mapping[int, bytes | str] | None = None,
    nonce: bytes | None = None,
    max_age: timedelta | None = None,
    allow_debug: bool = False,
    strict: bool = False,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    chain_cache: ChainCache | None = None,
) -> AttestationDocument:
    """Verify a COSE_Sign1 attestation document and return its payload.

    Args:
        data: the document (raw CBOR, tagged or untagged).
        trusted_roots: the pinned roots: certificates, PEM/DER bytes, or SHA-256
            fingerprints as hex (colons allowed). Nothing is trusted by default.
        at: the verification time (default: now); naive datetimes are taken as UTC.
        expected_pcrs: PCR index -> expected value (bytes or hex).
        nonce: the nonce the document must carry.
        max_age: refuse documents whose timestamp is older than this at ``at``.
        allow_debug: accept debug-mode documents (PCR0, 1, 2 all zero). Never in production.
        strict: cap ``user_data`` and ``nonce`` at 512 bytes (AWS's prose) instead of 1024.
        clock_skew: how far after ``at`` a document may be dated.
        chain_cache: where verified chains are remembered (default: a process-wide cache).

    Raises:
        VerificationError: a subclass naming the failed check (see ``fake_nsm.errors``).
    """
    fingerprints = resolve_trusted_roots(trusted_roots)
    moment = _utc(at)
    pcr_policy = _pcr_policy(expected_pcrs)
    _check_options(nonce, max_age, clock_skew)
    cache = DEFAULT_CHAIN_CACHE if chain_cache is None else chain_cache

    message = decode_cose_sign1(data)
    document = parse_attestation_payload(message.payload, strict=strict)

    root_fingerprint = fingerprint(document.cabundle[0])
    if root_fingerprint not in fingerprints:
        raise UntrustedRootError(
            f"the document's root certificate (cabundle[0], SHA-256 {root_fingerprint}) is "
            "not one of the trusted roots; pass its issuer's root (the test CA's for emulator "
            "documents, AWS's for real ones)",
            fingerprint=root_fingerprint,
        )
    key = chain_key(document.certificate, document.cabundle)
    chain: ParsedChain | None = cache.get(key)
    if chain is None:
        chain = parse_chain(document.certificate, document.cabundle)
    check_validity(chain, moment)
    # The COSE signature before the chain's: it is one ECDSA verify and it covers the
    # whole payload, so a tampered document costs one verify, not one per certificate.
    message.verify(chain.leaf_public_key)
    if not chain.signatures_verified:
        chain = verify_chain_signatures(chain)
        cache.put(key, chain)

    if document.is_debug_mode and not allow_debug:
        raise DebugModeError(
            "debug-mode document (PCR0, PCR1 and PCR2 are all zero): a debug enclave's "
            "attestation proves nothing about its code; allow it (allow_debug=True, "
            "--allow-debug) only in tests"
        )
    _check_pcrs(document, pcr_policy)
    if nonce is not None:
        _check_nonce(document, bytes(nonce))
    _check_freshness(document, moment, max_age, clock_skew)
    return document


def read_unverified_document(data: bytes, *, strict: bool = False) -> AttestationDocument:
    """Decode a document and check its syntax WITHOUT any cryptographic verification.

    For inspecting documents only: nothing in the result is authenticated.

    Raises:
        MalformedDocumentError, UnsupportedAlgorithmError: as the first steps of verification.
    """
    return parse_attestation_payload(decode_cose_sign1(data).payload, strict=strict)


def _utc(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if not isinstance(at, datetime):
        raise VerificationInputError(f"at must be a datetime, got {type(at).__name__}")
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def _pcr_policy(expected: Mapping[int, bytes | str] | None) -> dict[int, bytes]:
    if expected is None:
        return {}
    try:
        items = list(expected.items())
    except AttributeError as error:
        raise VerificationInputError(
            f"expected_pcrs must be a mapping of index -> value, got {type(expected).__name__}"
        ) from error
    policy: dict[int, bytes] = {}
    for index, value in items:
        if type(index) is not int or not 0 <= index < 32:
            raise VerificationInputError(f"expected PCR index must be 0..31, got {index!r}")
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value.removeprefix("0x"))
            except ValueError as error:
                raise VerificationInputError(f"expected PCR{index} is not hex: {value!r}") from error
        if not isinstance(value, (bytes, bytearray)):
            raise VerificationInputError(
                f"expected PCR{index} must be bytes or hex text, got {type(value).__name__}"
            )
        policy[index] = bytes(value)
    return policy


def _check_options(nonce: object, max_age: object, clock_skew: object) -> None:
    if nonce is not None and not isinstance(nonce, (bytes, bytearray)):
        raise VerificationInputError(f"nonce must be bytes, got {type(nonce).__name__}")
    if max_age is not None and (not isinstance(max_age, timedelta) or max_age < timedelta(0)):
        raise VerificationInputError(f"max_age must be a non-negative timedelta, got {max_age!r}")
    if not isinstance(clock_skew, timedelta) or clock_skew < timedelta(0):
        raise VerificationInputError(
            f"clock_skew must be a non-negative timedelta, got {clock_skew!r}"
        )


def _check_pcrs(document: AttestationDocument, policy: Mapping[int, bytes]) -> None:
    for index, expected in sorted(policy.items()):
        actual = document.pcrs.get(index)
        if actual is None or not hmac.compare_digest(actual, expected):
            shown = "absent" if actual is None else actual.hex()
            raise PcrMismatchError(
                f"PCR{index} is {shown}, expected {expected.hex()}",
                index=index,
                expected=expected,
                actual=actual,
            )


def _check_nonce(document: AttestationDocument, nonce: bytes) -> None:
    if document.nonce is None or not hmac.compare_digest(document.nonce, nonce):
        shown = "no nonce" if document.nonce is None else f"nonce {document.nonce.hex()}"
        raise NonceMismatchError(
            f"the document carries {shown}, expected {nonce.hex()}: it answers another request",
            expected=nonce,
            actual=document.nonce,
        )


def _check_freshness(
    document: AttestationDocument, at: datetime, max_age: timedelta | None, skew: timedelta
) -> None:
    at_ms = (at - _EPOCH) // _ONE_MS
    age_ms = at_ms - document.timestamp
    if -age_ms > skew // _ONE_MS:
        raise FutureDocumentError(
            f"the document is dated {-age_ms} ms after the verification time "
            f"(more than the allowed clock skew of {skew.total_seconds():g} s)",
            timestamp=document.timestamp,
            at=at,
            max_age=max_age,
        )
    if max_age is not None and age_ms > max_age // _ONE_MS:
        raise StaleDocumentError(
            f"the document is {age_ms / 1000:.3f} s old, older than max_age "
            f"{max_age.total_seconds():g} s",
            timestamp=document.timestamp,
            at=at,
            max_age=max_age,
        )
