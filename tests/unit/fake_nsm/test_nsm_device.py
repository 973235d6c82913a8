"""Conformance of the fake NSM with AWS's on-device checks (nsm-api ``nsm-check.rs``, nitro-facts §1.3).

Every check goes through the client and the wire codec (an in-process transport), so the bytes
a real enclave would exchange are exercised; the ioctl transport is covered at the end with a
fake kernel that reads and writes the iovecs.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import threading
from pathlib import Path

import pytest
from tests.unit.fake_nsm.nsm_helpers import (
    INSTANCE_ID,
    MEASUREMENTS,
    MODULE_ID,
    REAL_PCR4_PREFIX,
    DeviceTransport,
    FakeIoctl,
    document_payload,
    make_device,
)

from fake_nsm import codec
from fake_nsm.client import NSM_IOCTL_REQUEST, DevNsmTransport, NsmClient, NsmMessage
from fake_nsm.device import NsmDevice, extend, instance_pcr
from fake_nsm.errors import (
    InputTooLarge,
    InternalError,
    InvalidIndex,
    InvalidResponse,
    NsmConfigError,
    NsmUnavailable,
    ReadOnlyIndex,
)

ZERO = bytes(48)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ca")


@pytest.fixture
def device(ca_dir: Path) -> NsmDevice:
    return make_device(ca_dir)


@pytest.fixture
def nsm(device: NsmDevice) -> NsmClient:
    return NsmClient(DeviceTransport(device))


# --- DescribeNSM and the boot state ---------------------------------------------------------


def test_describe_nsm(nsm: NsmClient) -> None:
    description = nsm.describe_nsm()
    assert description.max_pcrs == 32
    assert description.module_id == MODULE_ID
    assert description.digest == "SHA384"
    assert description.locked_pcrs == frozenset(range(16))
    assert (description.version_major, description.version_minor, description.version_patch) == (1, 0, 0)


def test_boot_pcrs(nsm: NsmClient) -> None:
    for index in range(32):
        pcr = nsm.describe_pcr(index)
        assert len(pcr.data) == 48  # PCR length follows the SHA384 digest
        assert pcr.lock == (index < 16), index
    for index in (0, 1, 2, 8):
        assert nsm.describe_pcr(index).data == MEASUREMENTS[index]
    assert nsm.describe_pcr(3).data == ZERO  # no IAM role
    assert nsm.describe_pcr(4).data == hashlib.sha384(ZERO + INSTANCE_ID.encode()).digest()
    for index in [5, 6, 7, *range(9, 32)]:
        assert nsm.describe_pcr(index).data == ZERO, index


def test_pcr4_matches_the_genuine_aws_value_for_that_instance() -> None:
    assert instance_pcr(INSTANCE_ID).hex().startswith(REAL_PCR4_PREFIX)
    assert instance_pcr(INSTANCE_ID).hex().endswith("37c6")


def test_debug_mode_zeroes_image_pcrs_but_keeps_3_and_4(ca_dir: Path) -> None:
    role = hashlib.sha384(b"role").digest()
    nsm = NsmClient(DeviceTransport(make_device(ca_dir, debug_mode=True, pcr3=role.hex())))
    for index in (0, 1, 2, 8):
        assert nsm.describe_pcr(index).data == ZERO
    assert nsm.describe_pcr(3).data == role
    assert nsm.describe_pcr(4).data == instance_pcr(INSTANCE_ID)


def test_explicit_instance_id_sets_pcr4(ca_dir: Path) -> None:
    nsm = NsmClient(DeviceTransport(make_device(ca_dir, instance_id="i-0123456789abcdef0")))
    assert nsm.describe_pcr(4).data == instance_pcr("i-0123456789abcdef0")


@pytest.mark.parametrize(
    ("options", "mentions"),
    [
        ({"measurements": {5: ZERO}}, "PCR 0, 1, 2 and 8"),
        ({"measurements": {0: b"short"}}, "48 bytes"),
        ({"measurements": {0: "zz"}}, "not hex"),
        ({"pcr3": bytes(32)}, "48 bytes"),
        ({"module_id": ""}, "non-empty"),
    ],
)
def test_bad_device_configuration_is_a_typed_error(ca_dir: Path, options: dict, mentions: str) -> None:
    with pytest.raises(NsmConfigError, match=mentions):
        make_device(ca_dir, signer=object(), **options)


# --- locks and extends ------------------------------------------------------------------------


def test_boot_locked_pcrs_refuse_lock_and_extend(nsm: NsmClient) -> None:
    for index in range(16):
        before = nsm.describe_pcr(index).data
        with pytest.raises(ReadOnlyIndex):
            nsm.lock_pcr(index)
        with pytest.raises(ReadOnlyIndex):
            nsm.extend_pcr(index, b"data")
        after = nsm.describe_pcr(index)
        assert after.lock and after.data == before


def test_extend_then_lock_user_pcrs(nsm: NsmClient) -> None:
    for index in range(16, 32):
        data = f"measurement {index}".encode()
        new = nsm.extend_pcr(index, data)
        assert new == hashlib.sha384(ZERO + data).digest() != ZERO
        assert nsm.extend_pcr(index, b"") == extend(new, b"")
        nsm.lock_pcr(index)
        locked_value = nsm.describe_pcr(index)
        assert locked_value.lock
        with pytest.raises(ReadOnlyIndex):
            nsm.extend_pcr(index, b"more")
        with pytest.raises(ReadOnlyIndex):
            nsm.lock_pcr(index)
        assert nsm.describe_pcr(index) == locked_value
    assert nsm.describe_nsm().locked_pcrs == frozenset(range(32))


def test_lock_pcrs_range(nsm: NsmClient) -> None:
    nsm.lock_pcrs(20)  # 0..15 already locked: still fine
    assert nsm.describe_nsm().locked_pcrs == frozenset(range(20))
    nsm.lock_pcrs(32)
    assert nsm.describe_nsm().locked_pcrs == frozenset(range(32))
    with pytest.raises(InvalidIndex):
        nsm.lock_pcrs(33)
    nsm.lock_pcrs(0)


@pytest.mark.parametrize("index", [32, 33, 1000, 65535])
def test_out_of_range_index_is_invalid_index(nsm: NsmClient, index: int) -> None:
    with pytest.raises(InvalidIndex):
        nsm.describe_pcr(index)
    with pytest.raises(InvalidIndex):
        nsm.extend_pcr(index, b"x")
    with pytest.raises(InvalidIndex):
        nsm.lock_pcr(index)


# --- attestation and random -----------------------------------------------------------------


def test_attestation_with_1024_byte_fields_carries_them_and_the_locked_pcrs(nsm: NsmClient) -> None:
    nsm.extend_pcr(16, b"app")
    nsm.lock_pcr(16)
    nsm.extend_pcr(17, b"unlocked, so not in the document")
    fields = {"user_data": b"u" * 1024, "nonce": b"n" * 1024, "public_key": b"k" * 1024}
    payload = document_payload(nsm.get_attestation_doc(**fields))
    assert payload["module_id"] == MODULE_ID
    assert sorted(payload["pcrs"]) == [*range(16), 16]
    assert payload["pcrs"][16] == extend(ZERO, b"app")
    assert payload["pcrs"][0] == MEASUREMENTS[0]
    assert {name: payload[name] for name in fields} == fields


def test_attestation_absent_fields_are_null(nsm: NsmClient) -> None:
    payload = document_payload(nsm.get_attestation_doc(nonce=b"fresh"))
    assert payload["nonce"] == b"fresh"
    assert payload["user_data"] is None and payload["public_key"] is None


@pytest.mark.parametrize("field", ["user_data", "nonce", "public_key"])
def test_attestation_field_over_1024_bytes_is_input_too_large(nsm: NsmClient, field: str) -> None:
    with pytest.raises(InputTooLarge):
        nsm.get_attestation_doc(**{field: bytes(1025)})


def test_strict_mode_limits_user_data_and_nonce_to_512(ca_dir: Path) -> None:
    nsm = NsmClient(DeviceTransport(make_device(ca_dir, strict=True)))
    nsm.get_attestation_doc(user_data=bytes(512), nonce=bytes(512), public_key=bytes(1024))
    for field in ("user_data", "nonce"):
        with pytest.raises(InputTooLarge):
            nsm.get_attestation_doc(**{field: bytes(513)})


def test_get_random_is_256_fresh_bytes(nsm: NsmClient) -> None:
    draws = {nsm.get_random() for _ in range(8)}
    assert len(draws) == 8
    assert all(len(draw) == 256 for draw in draws)


def test_device_concurrent_extends_are_not_lost(device: NsmDevice) -> None:
    nsm = NsmClient(DeviceTransport(device))

    def work() -> None:
        for _ in range(200):
            nsm.extend_pcr(20, b"same")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    value = ZERO
    for _ in range(1600):
        value = extend(value, b"same")
    assert device.pcr(20) == value


def test_signer_failure_is_internal_error_not_a_crash(ca_dir: Path) -> None:
    class BrokenSigner:
        def sign(self, pcrs, **fields):  # type: ignore[no-untyped-def]
            raise RuntimeError("HSM on fire")

    nsm = NsmClient(DeviceTransport(make_device(ca_dir, signer=BrokenSigner())))
    with pytest.raises(InternalError):
        nsm.get_attestation_doc()
    assert len(nsm.get_random()) == 256  # still serving


# --- the /dev/nsm transport -------------------------------------------------------------------


def test_ioctl_transport_passes_the_two_iovec_message(device: NsmDevice) -> None:
    assert ctypes.sizeof(NsmMessage) == 32 and NSM_IOCTL_REQUEST == 3223325184
    fake = FakeIoctl(device)
    with NsmClient(DevNsmTransport("/dev/null", ioctl=fake)) as nsm:
        assert nsm.describe_nsm().module_id == MODULE_ID
        assert nsm.extend_pcr(16, b"x") == extend(ZERO, b"x")
        assert len(nsm.get_attestation_doc(public_key=bytes(1024))) > 1000
    assert {code for _, code in fake.calls} == {0xC0200A00}


def test_ioctl_transport_errors(device: NsmDevice) -> None:
    def emsgsize(fd: int, code: int, message: NsmMessage) -> int:
        raise OSError(errno.EMSGSIZE, "Message too long")

    with NsmClient(DevNsmTransport("/dev/null", ioctl=emsgsize)) as nsm, pytest.raises(InputTooLarge):
        nsm.get_random()
    # The real fcntl.ioctl on a device that is not the NSM: ENOTTY -> InternalError.
    with NsmClient(DevNsmTransport("/dev/null")) as nsm, pytest.raises(InternalError, match="ioctl"):
        nsm.get_random()
    # A reply that does not answer the request, or garbage: InvalidResponse, not a cbor2 error.
    wrong = FakeIoctl(device, reply=codec.encode_response(codec.LockPCRResponse()))
    with NsmClient(DevNsmTransport("/dev/null", ioctl=wrong)) as nsm, pytest.raises(InvalidResponse):
        nsm.get_random()
    garbage = FakeIoctl(device, reply=b"\xa1\x65Err")
    with NsmClient(DevNsmTransport("/dev/null", ioctl=garbage)) as nsm, pytest.raises(InvalidResponse):
        nsm.describe_nsm()
    transport = DevNsmTransport("/dev/null", ioctl=FakeIoctl(device))
    with pytest.raises(InputTooLarge):
        transport.exchange(bytes(4097))
    transport.close()
    with pytest.raises(NsmUnavailable, match="/nonexistent/nsm"):
        DevNsmTransport("/nonexistent/nsm")
