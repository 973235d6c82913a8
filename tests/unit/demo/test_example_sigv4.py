"""The example enclave signs its KMS requests itself; botocore must agree with every byte.

On real Nitro the enclave's ``kms_fetch.py`` talks to kms.<region>.amazonaws.com with the
parent's credentials, so its SigV4 must be AWS's: botocore's ``SigV4Auth`` is the reference.
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
botocore = pytest.importorskip("botocore")


def _kms_fetch() -> ModuleType:
    path = ROOT / "examples" / "confidential-service" / "enclave" / "kms_fetch.py"
    spec = importlib.util.spec_from_file_location("example_kms_fetch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLETOKEN"])
def test_signature_matches_botocore(token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    kms_fetch = _kms_fetch()
    now = datetime.datetime(2026, 12, 3, 15, 4, 5, tzinfo=datetime.timezone.utc)
    body = b'{"CiphertextBlob": "AAEC", "Recipient": {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}}'
    credentials = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
    if token:
        credentials["session_token"] = token
    ours = kms_fetch.sigv4_headers("TrentService.Decrypt", body, region="eu-west-1", credentials=credentials, now=now)

    request = AWSRequest(method="POST", url="https://kms.eu-west-1.amazonaws.com/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.Decrypt",
    })
    monkeypatch.setattr(botocore.auth.datetime, "datetime", _Frozen(now))  # SigV4Auth reads utcnow()
    SigV4Auth(Credentials("AKIDEXAMPLE", credentials["secret_access_key"], token), "kms", "eu-west-1").add_auth(request)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    assert request.headers["Authorization"] == ours["authorization"]


class _Frozen:
    """Stands in for ``datetime.datetime`` inside botocore.auth: a fixed now, the rest as is."""

    def __init__(self, now: datetime.datetime) -> None:
        self._now = now

    def utcnow(self) -> datetime.datetime:
        return self._now.replace(tzinfo=None)

    def now(self, tz: datetime.tzinfo | None = None) -> datetime.datetime:
        return self._now if tz else self._now.replace(tzinfo=None)

    def __getattr__(self, name: str) -> object:
        return getattr(datetime.datetime, name)
