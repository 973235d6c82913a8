"""The KMS state and its rules for keys, aliases and policies (no HTTP, no cryptography).

Identifier rules (AWS KMS API Reference, each operation's ``KeyId`` member):

- key id (UUID) and key ARN ``arn:aws:kms:<region>:<account>:key/<uuid>``: every operation;
- alias name ``alias/<name>`` and alias ARN ``arn:aws:kms:<region>:<account>:alias/<name>``:
  DescribeKey and the cryptographic operations (Encrypt, Decrypt, ReEncrypt,
  GenerateDataKey*, DeriveSharedSecret, GetPublicKey, Sign, Verify) only; EnableKey,
  DisableKey, ScheduleKeyDeletion, CancelKeyDeletion, PutKeyPolicy, GetKeyPolicy, the
  ListAliases filter and an alias's TargetKeyId take a key id or key ARN.

Messages of NotFoundException, DisabledException, KMSInvalidStateException and
AlreadyExistsException are AWS's as moto (``moto/kms``) reproduces them; every operation is
authorized against the key policy (``emulator.kms.policy``) before the key's state is
checked, as AWS does not reveal a key's state to a caller it refuses.
"""

from __future__ import annotations

import functools
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from emulator.kms import keys as key_specs
from emulator.kms.errors import (
    AlreadyExistsException,
    DisabledException,
    InvalidAliasNameException,
    InvalidArnException,
    InvalidMarkerException,
    KMSInvalidStateException,
    MalformedPolicyDocumentException,
    NotFoundException,
    UnsupportedOperationException,
    ValidationException,
)
from emulator.kms.keys import KmsKey
from emulator.kms.policy import KeyPolicy, RequestContext, authorize, default_policy, parse_policy
from emulator.kms.recipient import DEFAULT_MAX_AGE
from emulator.kms.store import Alias, KeyStore, MemoryStore
from fake_nsm.trusted_roots import TrustedRoot

__all__ = ["Caller", "DEFAULT_ACCOUNT", "DEFAULT_REGION", "KeyRegistry"]

DEFAULT_ACCOUNT = "111122223333"
DEFAULT_REGION = "us-east-1"
_ARN = re.compile(r"^arn:aws[a-z-]*:kms:([a-z0-9-]+):(\d{12}):(key|alias)/(.+)$")
_DEFAULT_LIMIT = 100  # ListKeys / ListAliases "Default: 100"


@dataclass(frozen=True)
class Caller:
    """Who calls: the access key names an IAM user of the server's account.

    Attributes:
        account: the caller's account id.
        arn: ``arn:aws:iam::<account>:user/<access key id>`` (this emulator's rule).
    """

    account: str
    arn: str

    @classmethod
    def from_access_key(cls, access_key: str, account: str = DEFAULT_ACCOUNT) -> Caller:
        return cls(account=account, arn=f"arn:aws:iam::{account}:user/{access_key}")


@functools.lru_cache(maxsize=256)
def _parsed(policy: str) -> KeyPolicy:
    return parse_policy(policy)


class KeyRegistry:
    """Keys, aliases and policies of one account and region. Thread-safe.

    Args:
        region, account: where the keys live (ARNs use them).
        store: where state persists (default: memory only).
        trusted_roots: the roots attestation documents must chain to (the test CA's).
        max_age: how old an attestation document may be.
        clock: seconds since the epoch (tests move it).
    """

    def __init__(
        self,
        *,
        region: str = DEFAULT_REGION,
        account: str = DEFAULT_ACCOUNT,
        store: KeyStore | None = None,
        trusted_roots: Sequence[TrustedRoot] = (),
        max_age: timedelta = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.account = account
        self.trusted_roots = tuple(trusted_roots)
        self.max_age = max_age
        self._clock = clock
        self._store = store or MemoryStore()
        self._lock = threading.RLock()
        loaded_keys, loaded_aliases = self._store.load()
        self._keys: dict[str, KmsKey] = {key.key_id: key for key in sorted(loaded_keys, key=lambda k: k.created)}
        self._aliases: dict[str, Alias] = {alias.name: alias for alias in loaded_aliases}

    def close(self) -> None:
        """Close the store."""
        self._store.close()

    # ---------------------------------------------------------------- identifiers

    def key_arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:key/{key_id}"

    def alias_arn(self, name: str) -> str:
        return f"arn:aws:kms:{self.region}:{self.account}:{name}"

    def resolve(self, identifier: str, *, allow_alias: bool) -> KmsKey:
        """The key an identifier names.

        Raises:
            NotFoundException: no such key or alias, or an alias where none is allowed.
            InvalidArnException: an ARN that is not a KMS key or alias ARN.
        """
        with self._lock:
            self._purge_deleted()
            if identifier.startswith("arn:"):
                match = _ARN.match(identifier)
                if match is None:
                    raise InvalidArnException(f"Invalid arn {identifier}")
                region, account, kind, rest = match.groups()
                if kind == "alias":
                    if not allow_alias:
                        raise NotFoundException(f"Invalid keyId '{identifier}'")
                    if (region, account) != (self.region, self.account):
                        raise NotFoundException(f"Alias {identifier} is not found.")
                    return self._by_alias(f"alias/{rest}")
                if (region, account) != (self.region, self.account):
                    raise NotFoundException(f"Key '{identifier}' does not exist")
                return self._by_id(rest)
            if identifier.startswith("alias/"):
                if not allow_alias:
                    raise NotFoundException(f"Invalid keyId '{identifier}'")
                return self._by_alias(identifier)
            return self._by_id(identifier)

    def _by_id(self, key_id: str) -> KmsKey:
        try:
            canonical = str(uuid.UUID(key_id))
        except ValueError:
            raise NotFoundException(f"Invalid keyId '{key_id}'") from None
        key = self._keys.get(canonical)
        if key is None or canonical != key_id.lower():
            raise NotFoundException(f"Key '{self.key_arn(key_id)}' does not exist")
        return key

    def _by_alias(self, name: str) -> KmsKey:
        alias = self._aliases.get(name)
        if alias is None or alias.key_id not in self._keys:
            raise NotFoundException(f"Alias {self.alias_arn(name)} is not found.")
        return self._keys[alias.key_id]

    def key_by_id(self, key_id: str) -> KmsKey | None:
        """The key with this UUID, or None (for ciphertext blobs that carry one)."""
        with self._lock:
            self._purge_deleted()
            return self._keys.get(key_id)

    def _purge_deleted(self) -> None:
        now = self._clock()
        for key in [k for k in self._keys.values() if k.deletion_date is not None and k.deletion_date <= now]:
            del self._keys[key.key_id]
            self._store.delete_key(key.key_id)
            for alias in [a for a in self._aliases.values() if a.key_id == key.key_id]:
                del self._aliases[alias.name]
                self._store.delete_alias(alias.name)

    def _save(self, key: KmsKey) -> KmsKey:
        self._keys[key.key_id] = key
        self._store.save_key(key)
        return key

    # ---------------------------------------------------------------- authorization

    def base_values(self, caller: Caller) -> dict[str, list[str]]:
        """Condition keys every request has (lower case)."""
        return {
            "kms:calleraccount": [caller.account],
            "aws:principalarn": [caller.arn],
            "aws:principalaccount": [caller.account],
        }

    def authorize(
        self, caller: Caller, key: KmsKey, action: str, values: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        """Raise AccessDeniedException unless the key policy allows ``action``."""
        context_values: dict[str, Sequence[str]] = dict(self.base_values(caller))
        context_values.update(values or {})
        context = RequestContext(
            action=action,
            caller_arn=caller.arn,
            caller_account=caller.account,
            resource=key.arn,
            values=context_values,
        )
        authorize(_parsed(key.policy), context)

    @staticmethod
    def require_enabled(key: KmsKey) -> None:
        """Raise unless the key can be used for cryptography."""
        if key.state == "PendingDeletion":
            raise KMSInvalidStateException(f"{key.arn} is pending deletion.")
        if not key.enabled:
            raise DisabledException(f"{key.arn} is disabled.")

    @staticmethod
    def _not_pending(key: KmsKey) -> None:
        if key.state == "PendingDeletion":
            raise KMSInvalidStateException(f"{key.arn} is pending deletion.")

    def _check_new_policy(self, caller: Caller, policy: str, bypass: bool, arn: str) -> None:
        parsed = _parsed(policy)
        if bypass:
            return
        # PutKeyPolicy / CreateKey "BypassPolicyLockoutSafetyCheck": refuse a policy under
        # which the caller could not change it again (message as AWS words it).
        context = RequestContext(
            action="kms:PutKeyPolicy", caller_arn=caller.arn, caller_account=caller.account,
            resource=arn, values=self.base_values(caller),
        )
        if parsed.evaluate(context) != "Allow":
            raise MalformedPolicyDocumentException(
                "The new key policy will not allow you to update the key policy in the future."
            )

    # ---------------------------------------------------------------- keys

    def create_key(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """CreateKey."""
        if "KeySpec" in params and "CustomerMasterKeySpec" in params:
            raise ValidationException(
                "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. "
                "CustomerMasterKeySpec is deprecated."
            )
        spec = params.get("KeySpec") or params.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
        if params.get("Origin", "AWS_KMS") != "AWS_KMS" or "CustomKeyStoreId" in params:
            raise UnsupportedOperationException(
                "Only keys with Origin AWS_KMS in the default key store are supported by this local KMS"
            )
        if params.get("MultiRegion"):
            raise UnsupportedOperationException("Multi-Region keys are not supported by this local KMS")
        usage = key_specs.check_key_spec(spec, params.get("KeyUsage"))
        key_id = str(uuid.uuid4())
        arn = self.key_arn(key_id)
        policy = params.get("Policy") or default_policy(self.account)
        if "Policy" in params:
            self._check_new_policy(caller, policy, bool(params.get("BypassPolicyLockoutSafetyCheck")), arn)
        key = KmsKey(
            key_id=key_id, arn=arn, account=self.account, region=self.region, key_spec=spec,
            key_usage=usage, material=key_specs.new_material(spec), policy=policy,
            description=params.get("Description", ""), created=self._clock(),
            tags=tuple((tag["TagKey"], tag["TagValue"]) for tag in params.get("Tags", ())),
        )
        with self._lock:
            self._save(key)
        return {"KeyMetadata": key.metadata()}

    def describe_key(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """DescribeKey (accepts aliases)."""
        key = self.resolve(params["KeyId"], allow_alias=True)
        self.authorize(caller, key, "kms:DescribeKey")
        return {"KeyMetadata": key.metadata()}

    def list_keys(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """ListKeys, paginated by Limit/Marker (IAM-only on AWS: no key policy applies)."""
        with self._lock:
            self._purge_deleted()
            entries = [{"KeyId": key.key_id, "KeyArn": key.arn} for key in self._keys.values()]
        page, result = _paginate(entries, params)
        result["Keys"] = page
        return result

    def _change_state(self, caller: Caller, params: Mapping[str, Any], action: str,
                      change: Callable[[KmsKey], KmsKey]) -> KmsKey:
        with self._lock:
            key = self.resolve(params["KeyId"], allow_alias=False)
            self.authorize(caller, key, action)
            return self._save(change(key))

    def enable_key(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """EnableKey (KMSInvalidStateException while pending deletion)."""

        def enable(key: KmsKey) -> KmsKey:
            self._not_pending(key)
            return key.with_changes(enabled=True)

        self._change_state(caller, params, "kms:EnableKey", enable)
        return {}

    def disable_key(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """DisableKey (KMSInvalidStateException while pending deletion)."""

        def disable(key: KmsKey) -> KmsKey:
            self._not_pending(key)
            return key.with_changes(enabled=False)

        self._change_state(caller, params, "kms:DisableKey", disable)
        return {}

    def schedule_key_deletion(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """ScheduleKeyDeletion: 7..30 days (API reference; the model's range is 1..365)."""
        days = params.get("PendingWindowInDays", 30)
        if not 7 <= days <= 30:
            # [inferred] wording; the range is the API reference's "between 7 and 30".
            raise ValidationException(
                f"1 validation error detected: Value '{days}' at 'pendingWindowInDays' failed "
                "to satisfy constraint: Member must have value between 7 and 30, inclusive"
            )

        def schedule(key: KmsKey) -> KmsKey:
            self._not_pending(key)
            return key.with_changes(
                enabled=False, deletion_date=self._clock() + days * 86400, pending_window_days=days
            )

        key = self._change_state(caller, params, "kms:ScheduleKeyDeletion", schedule)
        return {
            "KeyId": key.arn,
            "DeletionDate": key.deletion_date,
            "KeyState": key.state,
            "PendingWindowInDays": days,
        }

    def cancel_key_deletion(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """CancelKeyDeletion: the key comes back Disabled (KMS Developer Guide "Deleting keys")."""

        def cancel(key: KmsKey) -> KmsKey:
            if key.state != "PendingDeletion":
                raise KMSInvalidStateException(f"{key.arn} is not pending deletion.")
            return key.with_changes(deletion_date=None, pending_window_days=None, enabled=False)

        key = self._change_state(caller, params, "kms:CancelKeyDeletion", cancel)
        return {"KeyId": key.arn}

    # ---------------------------------------------------------------- policies

    @staticmethod
    def _policy_name(params: Mapping[str, Any]) -> None:
        name = params.get("PolicyName", "default")
        if name != "default":
            # The only key policy name is "default" (API reference, PutKeyPolicy).
            raise NotFoundException("No such policy exists")

    def put_key_policy(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """PutKeyPolicy: validates the policy and the lockout safety check."""
        self._policy_name(params)
        policy = params["Policy"]

        def put(key: KmsKey) -> KmsKey:
            self._not_pending(key)
            self._check_new_policy(caller, policy, bool(params.get("BypassPolicyLockoutSafetyCheck")), key.arn)
            return key.with_changes(policy=policy)

        self._change_state(caller, params, "kms:PutKeyPolicy", put)
        return {}

    def get_key_policy(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """GetKeyPolicy."""
        self._policy_name(params)
        key = self.resolve(params["KeyId"], allow_alias=False)
        self.authorize(caller, key, "kms:GetKeyPolicy")
        return {"Policy": key.policy, "PolicyName": "default"}

    # ---------------------------------------------------------------- aliases

    @staticmethod
    def _check_alias_name(name: str) -> None:
        if not name.startswith("alias/") or name == "alias/":
            # [inferred] AWS's wording for this refusal.
            raise ValidationException(
                f"Alias must start with the prefix \"alias/\" and name a key, got '{name}'"
            )
        if name.startswith("alias/aws/"):
            # CreateAlias: "The alias/aws/ prefix is reserved for AWS managed keys."
            raise InvalidAliasNameException("Alias must not begin with 'alias/aws/'")
        if ":" in name:
            raise ValidationException(f"{name} contains invalid characters for an alias")

    def _alias_target(self, caller: Caller, target: str, action: str) -> KmsKey:
        if target.startswith("alias/") or ":alias/" in target:
            raise ValidationException("Aliases must refer to keys. Not aliases")
        key = self.resolve(target, allow_alias=False)
        self._not_pending(key)
        self.authorize(caller, key, action)
        return key

    def create_alias(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """CreateAlias."""
        name = params["AliasName"]
        self._check_alias_name(name)
        with self._lock:
            key = self._alias_target(caller, params["TargetKeyId"], "kms:CreateAlias")
            if name in self._aliases:
                raise AlreadyExistsException(f"An alias with the name {self.alias_arn(name)} already exists")
            now = self._clock()
            alias = Alias(name=name, key_id=key.key_id, created=now, updated=now)
            self._aliases[name] = alias
            self._store.save_alias(alias)
        return {}

    def update_alias(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """UpdateAlias: point an existing alias at another key."""
        name = params["AliasName"]
        self._check_alias_name(name)
        with self._lock:
            old = self._aliases.get(name)
            if old is None:
                raise NotFoundException(f"Alias {self.alias_arn(name)} is not found.")
            key = self._alias_target(caller, params["TargetKeyId"], "kms:UpdateAlias")
            alias = Alias(name=name, key_id=key.key_id, created=old.created, updated=self._clock())
            self._aliases[name] = alias
            self._store.save_alias(alias)
        return {}

    def delete_alias(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """DeleteAlias."""
        name = params["AliasName"]
        self._check_alias_name(name)
        with self._lock:
            alias = self._aliases.get(name)
            if alias is None or alias.key_id not in self._keys:
                raise NotFoundException(f"Alias {self.alias_arn(name)} is not found.")
            self.authorize(caller, self._keys[alias.key_id], "kms:DeleteAlias")
            del self._aliases[name]
            self._store.delete_alias(name)
        return {}

    def list_aliases(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """ListAliases, optionally of one key (KeyId: key id or key ARN only)."""
        key_id = None
        if "KeyId" in params:
            key_id = self.resolve(params["KeyId"], allow_alias=False).key_id
        with self._lock:
            self._purge_deleted()
            entries = [
                {
                    "AliasName": alias.name,
                    "AliasArn": self.alias_arn(alias.name),
                    "TargetKeyId": alias.key_id,
                    "CreationDate": alias.created,
                    "LastUpdatedDate": alias.updated,
                }
                for alias in sorted(self._aliases.values(), key=lambda a: a.name)
                if key_id is None or alias.key_id == key_id
            ]
        page, result = _paginate(entries, params)
        result["Aliases"] = page
        return result


def _paginate(entries: list[dict[str, Any]], params: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    limit = params.get("Limit", _DEFAULT_LIMIT)
    marker = params.get("Marker")
    start = 0
    if marker is not None:
        if not marker.isdigit() or int(marker) > len(entries):
            raise InvalidMarkerException("The marker that specifies where pagination should next begin is not valid.")
        start = int(marker)
    page = entries[start : start + limit]
    truncated = start + limit < len(entries)
    result: dict[str, Any] = {"Truncated": truncated}
    if truncated:
        result["NextMarker"] = str(start + limit)
    return page, result
