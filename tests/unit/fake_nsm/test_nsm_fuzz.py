"""Hypothesis fuzz of the NSM request decoder and of the server's framing.

Properties: every byte string gets a well-formed NSM reply (never an exception); valid requests
survive a round trip in any integer width; no frame sequence stops the server. A few thousand
cases in total; ``bench/fuzz_nsm.py`` runs the long campaign.
"""

from __future__ import annotations

import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.fake_nsm.nsm_helpers import MODULE_ID, TinySigner

from fake_nsm import codec
from fake_nsm.device import NsmDevice
from fake_nsm.errors import InputTooLarge, InvalidArgument
from fake_nsm.server import MAX_FRAME, NsmServer

REQUEST_NAMES = ["DescribePCR", "ExtendPCR", "LockPCR", "LockPCRs", "DescribeNSM", "Attestation", "GetRandom"]
FIELD_NAMES = ["index", "data", "range", "user_data", "nonce", "public_key", "extra"]

cbor_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.binary(max_size=64),
    st.text(max_size=16),
    st.sampled_from(REQUEST_NAMES + FIELD_NAMES),
    st.floats(allow_nan=False),
)
cbor_values = st.recursive(
    cbor_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES + REQUEST_NAMES), children, max_size=4),
    ),
    max_leaves=12,
)
# Request-shaped CBOR: a variant name mapped to a map of plausible and implausible fields.
request_shaped = st.one_of(
    st.sampled_from(REQUEST_NAMES + ["Error", "x"]),
    st.builds(lambda name, body: {name: body}, st.sampled_from(REQUEST_NAMES + ["Nope"]), cbor_values),
)


def well_formed_reply(reply: bytes) -> codec.Response:
    response = codec.decode_response(reply)  # raises if the device ever wrote a bad reply
    assert codec.encode_response(response) == reply
    return response


@pytest.fixture(scope="module")
def device() -> NsmDevice:
    return NsmDevice(module_id=MODULE_ID, signer=TinySigner(MODULE_ID))


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), request_shaped.map(cbor2.dumps), cbor_values.map(cbor2.dumps)))
def test_any_bytes_get_a_well_formed_reply(device: NsmDevice, data: bytes) -> None:
    try:
        request = codec.decode_request(data)
    except InvalidArgument:
        assert well_formed_reply(device.handle(data)) == codec.ErrorResponse("InvalidArgument")
    else:
        assert codec.decode_request(codec.encode_request(request)) == request
        reply = well_formed_reply(device.handle(data))
        if isinstance(reply, codec.ErrorResponse):
            assert reply.code in ("InvalidIndex", "ReadOnlyIndex", "InputTooLarge")


@st.composite
def valid_requests(draw: st.DrawFn) -> codec.Request:
    index = draw(st.integers(min_value=0, max_value=0xFFFF))
    blob = st.none() | st.binary(max_size=1100)
    return draw(
        st.sampled_from(
            [
                codec.DescribePCR(index),
                codec.ExtendPCR(index, draw(st.binary(max_size=300))),
                codec.LockPCR(index),
                codec.LockPCRs(index),
                codec.DescribeNSM(),
                codec.GetRandom(),
                codec.Attestation(draw(blob), draw(blob), draw(blob)),
            ]
        )
    )


def _widen(value: object, width: int) -> bytes:
    """CBOR of ``value`` with every unsigned integer written ``width`` bytes wide."""
    if isinstance(value, bool) or value is None or isinstance(value, (bytes, str)):
        return cbor2.dumps(value)
    if isinstance(value, int):
        return bytes([{1: 0x18, 2: 0x19, 4: 0x1A, 8: 0x1B}[width]]) + value.to_bytes(width, "big")
    if isinstance(value, dict):
        return bytes([0xA0 + len(value)]) + b"".join(_widen(k, width) + _widen(v, width) for k, v in value.items())
    raise TypeError(value)


@settings(max_examples=500, deadline=None)
@given(request=valid_requests(), width=st.sampled_from([2, 4, 8]))
def test_valid_requests_decode_in_any_integer_width(request: codec.Request, width: int) -> None:
    wire = codec.encode_request(request)
    structure = cbor2.loads(wire)
    widened = _widen(structure, width)
    if len(widened) > codec.MAX_REQUEST_SIZE:
        with pytest.raises(InputTooLarge):
            codec.decode_request(widened)
    else:
        assert codec.decode_request(widened) == request


# --- framing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(device: NsmDevice) -> Iterator[NsmServer]:
    with tempfile.TemporaryDirectory(prefix="nsmfz-") as name, NsmServer(Path(name) / "s", device) as running:
        yield running


frames = st.lists(
    st.one_of(
        st.binary(max_size=64).map(lambda b: struct.pack(">I", len(b)) + b),  # well framed junk
        st.sampled_from(REQUEST_NAMES).map(lambda n: cbor2.dumps(n)).map(lambda b: struct.pack(">I", len(b)) + b),
        st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: struct.pack(">I", n)),  # any prefix
        st.binary(max_size=16),  # raw bytes
    ),
    max_size=6,
)


def _drain(sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, socket.timeout):
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=frames)
def test_no_frame_sequence_stops_the_server(server: NsmServer, sequence: list[bytes]) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(str(server.socket_path))
        payload = b"".join(sequence)
        try:
            bad.sendall(payload)
            bad.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server already closed us: a length over the slack
        _drain(bad)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as good:
        good.settimeout(10)
        good.connect(str(server.socket_path))
        request = cbor2.dumps("DescribeNSM")
        good.sendall(struct.pack(">I", len(request)) + request)
        (length,) = struct.unpack(">I", good.recv(4, socket.MSG_WAITALL))
        reply = codec.decode_response(good.recv(length, socket.MSG_WAITALL))
    assert isinstance(reply, codec.DescribeNSMResponse)
    assert server.serving and MAX_FRAME == 4160
