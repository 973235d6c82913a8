"""A local KMS for tests: the server, the VSOCK port enclaves reach it on, boto3 clients.

    with LocalKms(home, trusted_roots=[ca.root_der]) as kms:
        key_id = kms.create_key(policy=kms.attested_policy({0: pcr0}))
        blob = kms.client().encrypt(KeyId=key_id, Plaintext=b"secret")["CiphertextBlob"]
        # an enclave of `home` reaches the same KMS over VSOCK (3, kms.vsock_port)

The pytest plugin's ``nitro_kms`` fixture is one of these per session (per xdist worker),
trusting the session's test CA, with enclaves reaching it on VSOCK port 8000 as on Nitro they
reach ``vsock-proxy 8000 kms.<region>.amazonaws.com 443``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from emulator.errors import EmulatorError
from emulator.kms.faults import kms_fault_control, kms_faults_path
from emulator.kms.models import DEFAULT_ACCOUNT, DEFAULT_REGION
from emulator.kms.server import KmsServer
from emulator.testing.spec import home_env
from emulator.vsock.forward import Endpoint, Forwarder, from_enclave
from emulator.settings import Settings
from fake_nsm.faults import FaultControl, FaultPlan
from fake_nsm.trusted_roots import TrustedRoot

#: The parent VSOCK port enclaves reach the KMS on (vsock-proxy's customary 8000).
KMS_VSOCK_PORT = 8000
#: Operations an enclave asks for with a Recipient (nitro-facts §5).
RECIPIENT_ACTIONS = (
    "kms:Decrypt",
    "kms:DeriveSharedSecret",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair",
    "kms:GenerateRandom",
)


class LocalKmsError(EmulatorError):
    """The test KMS could not start or was asked for something it cannot do."""


class LocalKms:
    """A running local KMS (memory only), reachable over HTTP and from ``home``'s enclaves."""

    def __init__(
        self,
        home: Path,
        *,
        trusted_roots: Sequence[TrustedRoot],
        vsock_port: int | None = KMS_VSOCK_PORT,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        state_dir: Path | None = None,
    ) -> None:
        self.home = Path(home)
        self.region = region
        self.account = account
        self.vsock_port = vsock_port
        self._fault_plan = FaultPlan(kms_faults_path(Settings(self.home)))
        self.server = KmsServer(state_dir=state_dir, trusted_roots=trusted_roots, region=region,
                                account=account, faults=self._fault_plan)
        self._forwarder: Forwarder | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LocalKms:
        self.server.start()
        if self.vsock_port is not None:
            try:
                with home_env(self.home):
                    self._forwarder = from_enclave(self.vsock_port, Endpoint("127.0.0.1", self.server.port))
            except Exception:
                self.server.stop()
                raise
            self._thread = threading.Thread(target=self._forwarder.serve_forever, name="kms-vsock", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the VSOCK port and the server; safe to call twice."""
        if self._forwarder is not None:
            self._forwarder.stop()
            self._forwarder.close()
            self._forwarder = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.server.stop()

    def __enter__(self) -> LocalKms:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def faults(self) -> FaultControl:
        """Injected faults, e.g. ``faults.add("Decrypt", error="ThrottlingException", count=1)``;
        ``nitro-emu fault kms`` with this ``NITRO_EMU_HOME`` reaches the same plan."""
        return kms_fault_control(self._fault_plan)

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    @property
    def root_arn(self) -> str:
        return f"arn:aws:iam::{self.account}:root"

    def client(self, **options: Any) -> Any:
        """An unmodified boto3 KMS client of this server (dummy credentials; ``options`` win)."""
        try:
            import boto3
        except ImportError as error:
            raise LocalKmsError("the nitro_kms client needs boto3: pip install boto3") from error
        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": "AKIDNITROEMUTEST",
            "aws_secret_access_key": "nitro-emu-test-secret",
        }
        settings.update(options)
        return boto3.client("kms", **settings)

    def attested_policy(
        self,
        pcrs: Mapping[int, bytes | str],
        *,
        actions: Sequence[str] = RECIPIENT_ACTIONS,
    ) -> dict[str, Any]:
        """A key policy as AWS's docs write it for enclaves: the account administers the key
        and encrypts; ``actions`` are allowed only with a Recipient whose PCRs are ``pcrs``."""
        conditions = {
            ("kms:RecipientAttestation:ImageSha384" if index == 0 else f"kms:RecipientAttestation:PCR{index}"):
                value.hex() if isinstance(value, bytes) else value.lower()
            for index, value in sorted(pcrs.items())
        }
        if not conditions:
            raise LocalKmsError("attested_policy needs at least one PCR to pin")
        admin = [
            "kms:CreateAlias", "kms:DescribeKey", "kms:DisableKey", "kms:EnableKey", "kms:Encrypt",
            "kms:GetKeyPolicy", "kms:GetPublicKey", "kms:PutKeyPolicy", "kms:ReEncrypt*",
            "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:GenerateDataKeyWithoutPlaintext",
        ]
        return {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "Administer and encrypt", "Effect": "Allow",
                 "Principal": {"AWS": self.root_arn}, "Action": admin, "Resource": "*"},
                {"Sid": "Release only to the attested enclave", "Effect": "Allow",
                 "Principal": {"AWS": self.root_arn}, "Action": list(actions), "Resource": "*",
                 "Condition": {"StringEqualsIgnoreCase": conditions}},
            ],
        }

    def create_key(self, *, policy: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Create a key (``options`` as boto3's ``create_key``) and return its KeyId."""
        if policy is not None:
            options["Policy"] = json.dumps(policy)
        metadata = self.client().create_key(**options)["KeyMetadata"]
        return str(metadata["KeyId"])
