"""The NSM wire codec: golden bytes of nitro-facts §1.2 and serde's decoding tolerance."""

from __future__ import annotations

import cbor2
import pytest

from fake_nsm import codec
from fake_nsm.errors import (
    InputTooLarge,
    InvalidArgument,
    InvalidIndex,
    InvalidResponse,
    NsmRequestError,
    ReadOnlyIndex,
)

ZERO_PCR = bytes(48)

# nitro-facts §1.2 "Exact bytes" table: (value, hex).
GOLDEN_REQUESTS = [
    (codec.DescribeNSM(), "6b44657363726962654e534d"),
    (codec.GetRandom(), "6947657452616e646f6d"),
    (codec.DescribePCR(16), "a16b4465736372696265504352a165696e64657810"),
    (codec.ExtendPCR(16, b"abc"), "a169457874656e64504352a265696e64657810646461746143616263"),
    (codec.LockPCR(16), "a1674c6f636b504352a165696e64657810"),
    (codec.LockPCRs(32), "a1684c6f636b50435273a16572616e67651820"),
    (
        codec.Attestation(),
        "a16b4174746573746174696f6ea369757365725f64617461f6656e6f6e6365f66a7075626c69635f6b6579f6",
    ),
]


@pytest.mark.parametrize(("request_value", "golden"), GOLDEN_REQUESTS, ids=lambda v: type(v).__name__)
def test_requests_encode_and_decode_as_the_golden_bytes(request_value: codec.Request, golden: str) -> None:
    assert codec.encode_request(request_value).hex() == golden
    assert codec.decode_request(bytes.fromhex(golden)) == request_value


def test_unit_responses_are_bare_strings_and_errors_a_one_entry_map() -> None:
    assert codec.encode_response(codec.LockPCRResponse()).hex() == "674c6f636b504352"
    assert codec.encode_response(codec.LockPCRsResponse()) == bytes.fromhex("684c6f636b50435273")
    assert (
        codec.encode_response(codec.ErrorResponse("InvalidIndex")).hex()
        == "a1654572726f726c496e76616c6964496e646578"
    )


def test_describe_pcr_response_bytes() -> None:
    encoded = codec.encode_response(codec.DescribePCRResponse(lock=True, data=ZERO_PCR))
    assert encoded.hex() == "a16b4465736372696265504352a2646c6f636bf56464617461" + "5830" + "00" * 48


def test_get_random_and_attestation_response_prefixes() -> None:
    random = codec.encode_response(codec.GetRandomResponse(random=bytes(range(256))))
    assert random.hex().startswith("a16947657452616e646f6d" + "a1" + "6672616e646f6d" + "590100")
    assert random.endswith(bytes(range(256)))
    document = b"\x84" + bytes(4500)
    attestation = codec.encode_response(codec.AttestationResponse(document=document))
    prefix = "a16b4174746573746174696f6e" + "a1" + "68646f63756d656e74" + "59" + f"{len(document):04x}"
    assert attestation.hex().startswith(prefix)
    assert attestation.endswith(document)


def test_describe_nsm_response_bytes_have_declared_field_order_and_sorted_set() -> None:
    module_id = "i-020b6af9246d90e92-enc0183d09086c24190"
    response = codec.DescribeNSMResponse(1, 0, 0, module_id, 32, (15, 3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14), "SHA384")
    expected = (
        "a16b44657363726962654e534d"
        "a7"
        "6d76657273696f6e5f6d616a6f7201"
        "6d76657273696f6e5f6d696e6f7200"
        "6d76657273696f6e5f706174636800"
        "696d6f64756c655f6964" + "7827" + module_id.encode().hex()
        + "686d61785f70637273" + "1820"
        + "6b6c6f636b65645f70637273" + "90" + "".join(f"{i:02x}" for i in range(16))
        + "66646967657374" + "66534841333834"
    )
    assert codec.encode_response(response).hex() == expected


# --- decoding tolerance (§1.2) ------------------------------------------------------------


def test_requests_in_the_forms_other_clients_send() -> None:
    # aws-nsm-interface: cbor2.dumps({'Attestation': {...: None}}) and cbor2.dumps('DescribeNSM').
    assert codec.decode_request(cbor2.dumps({"Attestation": {"user_data": b"u", "nonce": None, "public_key": None}})) == (
        codec.Attestation(user_data=b"u")
    )
    assert codec.decode_request(cbor2.dumps({"Attestation": {}})) == codec.Attestation()
    assert codec.decode_request(cbor2.dumps({"Attestation": {"nonce": cbor2.undefined}})) == codec.Attestation()
    assert codec.decode_request(cbor2.dumps({"DescribeNSM": None})) == codec.DescribeNSM()
    assert codec.decode_request(cbor2.dumps({"GetRandom": None})) == codec.GetRandom()


@pytest.mark.parametrize(
    "encoded_index",
    ["10", "1810", "190010", "1a00000010", "1b0000000000000010"],
    ids=["tiny", "u8", "u16", "u32", "u64"],
)
def test_integers_of_any_width_are_accepted(encoded_index: str) -> None:
    request = bytes.fromhex("a1674c6f636b504352a165696e646578" + encoded_index)
    assert codec.decode_request(request) == codec.LockPCR(16)


def test_unknown_fields_are_ignored_and_indefinite_lengths_accepted() -> None:
    assert codec.decode_request(cbor2.dumps({"ExtendPCR": {"index": 17, "data": b"x", "extra": [1, 2]}})) == (
        codec.ExtendPCR(17, b"x")
    )
    # {_ "DescribePCR": {_ "index": 5}} with indefinite maps (serde_cbor accepts them).
    indefinite = bytes.fromhex("bf6b4465736372696265504352bf65696e64657805ffff")
    assert codec.decode_request(indefinite) == codec.DescribePCR(5)


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        (b"", "empty"),
        (b"\xff", "not valid CBOR"),
        (bytes.fromhex("a1674c6f636b504352a165696e646578"), "not valid CBOR"),  # truncated
        (cbor2.dumps("DescribeNSM") + b"\x00", "trailing"),
        (cbor2.dumps("DescribePCR"), "map"),
        (cbor2.dumps("Reboot"), "unknown request"),
        (cbor2.dumps({"Reboot": {}}), "unknown request"),
        (cbor2.dumps({"DescribePCR": {"index": 1}, "GetRandom": None}), "one-entry map"),
        (cbor2.dumps(["DescribeNSM"]), "one-entry map"),
        (cbor2.dumps({"DescribePCR": {}}), "missing its field 'index'"),
        (cbor2.dumps({"DescribePCR": [16]}), "map of fields"),
        (cbor2.dumps({"DescribePCR": {"index": True}}), "unsigned 16-bit"),
        (cbor2.dumps({"DescribePCR": {"index": -1}}), "unsigned 16-bit"),
        (cbor2.dumps({"DescribePCR": {"index": 65536}}), "unsigned 16-bit"),
        (cbor2.dumps({"DescribePCR": {"index": "1"}}), "unsigned 16-bit"),
        (cbor2.dumps({"ExtendPCR": {"index": 16, "data": "text"}}), "byte string"),
        (cbor2.dumps({"Attestation": {"nonce": [1, 2]}}), "byte string"),
        (cbor2.dumps({"DescribeNSM": {"x": 1}}), "takes no fields"),
        (b"\x81" * 1000, "not valid CBOR"),
    ],
)
def test_bad_requests_are_invalid_argument_naming_the_problem(data: bytes, mentions: str) -> None:
    with pytest.raises(InvalidArgument, match=mentions) as caught:
        codec.decode_request(data)
    assert caught.value.code == "InvalidArgument"


def test_oversized_request_is_input_too_large() -> None:
    big = cbor2.dumps({"ExtendPCR": {"index": 16, "data": bytes(4096)}})
    with pytest.raises(InputTooLarge, match="4096"):
        codec.decode_request(big)
    exact = codec.encode_request(codec.ExtendPCR(16, bytes(4069)))
    assert len(exact) == 4096
    assert codec.decode_request(exact) == codec.ExtendPCR(16, bytes(4069))
    with pytest.raises(InputTooLarge):
        codec.decode_request(codec.encode_request(codec.ExtendPCR(16, bytes(4070))))


# --- responses, for the client -------------------------------------------------------------

RESPONSES = [
    codec.DescribePCRResponse(lock=False, data=ZERO_PCR),
    codec.ExtendPCRResponse(data=b"\x01" * 48),
    codec.LockPCRResponse(),
    codec.LockPCRsResponse(),
    codec.DescribeNSMResponse(1, 0, 0, "i-1-enc2", 32, tuple(range(17)), "SHA384"),
    codec.AttestationResponse(document=b"\x84doc"),
    codec.GetRandomResponse(random=b"r" * 256),
    codec.ErrorResponse("ReadOnlyIndex"),
]


@pytest.mark.parametrize("response", RESPONSES, ids=lambda r: type(r).__name__)
def test_responses_round_trip(response: codec.Response) -> None:
    assert codec.decode_response(codec.encode_response(response)) == response


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x1c",
        cbor2.dumps({"Error": "NoSuchCode"}),
        cbor2.dumps("Error"),
        cbor2.dumps({"DescribePCR": {"lock": 1, "data": ZERO_PCR}}),
        cbor2.dumps({"DescribePCR": {"lock": True}}),
        cbor2.dumps({"DescribeNSM": {"version_major": 1}}),
        cbor2.dumps({"GetRandom": {"random": "text"}}),
        cbor2.dumps({"LockPCR": {"x": 1}}),
        cbor2.dumps("GetRandom"),
        cbor2.dumps({"Attestation": {"document": b"d"}}) + b"junk",
        cbor2.dumps({"GetRandom": {"random": bytes(0x3000)}}),
    ],
)
def test_malformed_responses_raise_invalid_response(data: bytes) -> None:
    with pytest.raises(InvalidResponse):
        codec.decode_response(data)


def test_raise_for_error_maps_error_codes_and_mismatches() -> None:
    with pytest.raises(ReadOnlyIndex):
        codec.raise_for_error(codec.ErrorResponse("ReadOnlyIndex"), codec.ExtendPCR(0, b""))
    with pytest.raises(InvalidIndex) as caught:
        codec.raise_for_error(codec.ErrorResponse("InvalidIndex"), codec.DescribePCR(40))
    assert isinstance(caught.value, NsmRequestError) and caught.value.code == "InvalidIndex"
    with pytest.raises(InvalidResponse, match="DescribePCR was answered with GetRandom"):
        codec.raise_for_error(codec.GetRandomResponse(b"r"), codec.DescribePCR(1))
    with pytest.raises(InvalidResponse, match="Success"):
        codec.raise_for_error(codec.ErrorResponse("Success"), codec.GetRandom())
    ok = codec.LockPCRsResponse()
    assert codec.raise_for_error(ok, codec.LockPCRs(32)) is ok
