"""The test CA: a persisted AWS-shaped chain that issues one leaf per enclave (nitro-facts §2.3).

``TestCA.load_or_create(directory)`` creates the root and the three intermediates once, then
reloads them (milliseconds: private keys are parsed only when first needed). Before any use
the chain is brought up to date: an intermediate that is not yet valid, expired, or too close
to expiry to cover a child issued now is re-issued (new key) under the same root, and the
change is persisted. Leaves live in memory only and are reused until they expire, as on AWS.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import profiles, storage
from ca.errors import CANotFoundError, RootValidityError
from ca.profiles import CHILD_LIFETIME, CURVE, LEVELS, Names
from ca.storage import StoredLevel

Clock = Callable[[], datetime]

DEFAULT_REGION = "us-east-1"
# A cached leaf is replaced this long before it expires, so that a fresh document can still
# be verified for a while (AWS's exact renewal point is not documented).
LEAF_RENEW_MARGIN = timedelta(minutes=5)
_MAX_CACHED_LEAVES = 1024


def utc_now() -> datetime:
    """The default clock: the current time, aware, in UTC."""
    return datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime (with a time zone), got {moment!r}")
    return moment.astimezone(timezone.utc)


@dataclass(frozen=True)
class LeafCredentials:
    """What an enclave's NSM signs documents with.

    Attributes:
        certificate: the leaf certificate, DER.
        private_key: its P-384 private key (held in memory only).
        cabundle: DER certificates root first: root, regional, zonal, instance.
        not_after: the end of the leaf's validity (aware, UTC).
        not_before: the start of the leaf's validity (issuance time minus 3 s).
        enclave_id: the enclave (module id) the leaf was issued to.
    """

    certificate: bytes
    private_key: ec.EllipticCurvePrivateKey
    cabundle: tuple[bytes, ...]
    not_after: datetime
    not_before: datetime
    enclave_id: str

    def usable_at(self, moment: datetime) -> bool:
        """True when a document dated ``moment`` may still be signed with this leaf."""
        return self.not_before <= moment < self.not_after - LEAF_RENEW_MARGIN


class TestCA:
    """A persisted test CA shaped like AWS's Nitro PKI. Thread-safe.

    Attributes:
        directory: where the CA lives.
        created: True when this call created the CA (``load_or_create``).
        renewed: the levels re-issued while loading (e.g. ``("zonal", "instance")``).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, directory: Path, names: Names, levels: dict[str, StoredLevel], clock: Clock) -> None:
        self.directory = directory
        self._names = names
        self._levels = levels
        self._clock = clock
        self._lock = threading.RLock()
        self._leaves: dict[str, LeafCredentials] = {}
        self.created = False
        self.renewed: tuple[str, ...] = ()

    # ---------------------------------------------------------------- construction

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        clock: Clock | None = None,
        region: str = DEFAULT_REGION,
        instance_id: str | None = None,
    ) -> TestCA:
        """Load the CA in ``directory``, creating it first if there is none.

        Args:
            directory: the CA directory (created with mode 0700).
            clock: returns the current time (aware); defaults to the system clock.
            region, instance_id: names used only when creating (instance id random by default).
        """
        directory = Path(directory)
        clock = clock or utc_now
        storage.ensure_directory(directory)
        if _exists(directory):
            return cls.load(directory, clock=clock)
        with storage.locked(directory):
            if not _exists(directory):
                cls._create(directory, clock, region, instance_id)
                created = True
            else:
                created = False
        ca = cls.load(directory, clock=clock)
        ca.created = created
        if created:
            ca.renewed = ()  # a new CA's intermediates are first issues, not re-issues
        return ca

    @classmethod
    def load(cls, directory: Path, *, clock: Clock | None = None) -> TestCA:
        """Load an existing CA; raises :class:`CANotFoundError` when there is none."""
        directory = Path(directory)
        clock = clock or utc_now
        names = storage.read_config(directory)
        root = storage.read_level(directory, "root")
        if names is None or root is None:
            raise CANotFoundError(directory)
        levels = {"root": root}
        for level in LEVELS[1:]:
            stored = storage.read_level(directory, level)
            if stored is not None:
                levels[level] = stored
        ca = cls(directory, names, levels, clock)
        ca.renewed = ca.ensure_current()
        return ca

    @staticmethod
    def _create(directory: Path, clock: Clock, region: str, instance_id: str | None) -> None:
        if instance_id is not None and not profiles.INSTANCE_ID_RE.match(instance_id):
            raise ValueError(f"instance id {instance_id!r} is not i-<17 hex digits>")
        names = Names(region=region, instance_id=instance_id or profiles.random_instance_id())
        key = ec.generate_private_key(CURVE)
        root = StoredLevel.from_objects(profiles.build_root(key, names, _aware(clock())), key)
        # Intermediates first, the root and its config last: a crash part-way leaves no
        # root, so the next run starts over instead of loading a broken CA.
        for level in LEVELS[1:]:
            (directory / f"{level}.pem").unlink(missing_ok=True)
        storage.write_config(directory, names)
        storage.write_level(directory, "root", root)

    # ---------------------------------------------------------------- chain upkeep

    def _usable(self, level: str, parent: StoredLevel | None, moment: datetime) -> bool:
        stored = self._levels.get(level)
        if stored is None:
            return False
        cert = stored.certificate
        if parent is not None and not _issued_by(cert, parent.certificate):
            return False
        return cert.not_valid_before_utc <= moment and moment + CHILD_LIFETIME[level] <= cert.not_valid_after_utc

    def ensure_current(self, now: datetime | None = None) -> tuple[str, ...]:
        """Re-issue every intermediate that cannot serve at ``now``; returns their names."""
        moment = _aware(now) if now is not None else _aware(self._clock())
        with self._lock:
            if self._chain_usable(moment):
                return ()
            root = self._levels["root"].certificate
            if not self._usable("root", None, moment):
                raise RootValidityError(
                    moment.isoformat(),
                    root.not_valid_before_utc.isoformat(),
                    root.not_valid_after_utc.isoformat(),
                    f"use a time inside that window, or remove {self.directory} for a new root",
                )
            with storage.locked(self.directory):
                self._reload_intermediates()  # another process may have renewed already
                renewed: list[str] = []
                for index, level in enumerate(LEVELS[1:], start=1):
                    parent = self._levels[LEVELS[index - 1]]
                    if renewed or not self._usable(level, parent, moment):
                        key = ec.generate_private_key(CURVE)
                        cert = profiles.build_intermediate(
                            level, key, parent.certificate, parent.private_key, self._names, moment
                        )
                        self._levels[level] = StoredLevel.from_objects(cert, key)
                        storage.write_level(self.directory, level, self._levels[level])
                        renewed.append(level)
            return tuple(renewed)

    def _chain_usable(self, moment: datetime) -> bool:
        parent = None
        for level in LEVELS:
            if not self._usable(level, parent, moment):
                return False
            parent = self._levels[level]
        return True

    def _reload_intermediates(self) -> None:
        for level in LEVELS[1:]:
            stored = storage.read_level(self.directory, level)
            if stored is not None:
                current = self._levels.get(level)
                if current is None or current.der != stored.der:
                    self._levels[level] = stored

    # ---------------------------------------------------------------- leaves

    def issue_leaf(self, enclave_id: str, *, now: datetime | None = None) -> LeafCredentials:
        """The signing credentials of ``enclave_id`` at ``now`` (default: the clock).

        A leaf is reused while it is valid (renewed 5 minutes before it expires); a new one
        gets a new key, a serial of enclave-id bytes + 4 zero bytes + uint32 issuance
        seconds, and the validity [now - 3 s, now + 3 h].
        """
        profiles.enclave_serial_prefix(enclave_id)  # validates the id first
        moment = _aware(now) if now is not None else _aware(self._clock())
        with self._lock:
            cached = self._leaves.get(enclave_id)
            if cached is not None and cached.usable_at(moment):
                return cached
            self.ensure_current(moment)
            instance = self._levels["instance"]
            key = ec.generate_private_key(CURVE)
            cert = profiles.build_leaf(
                enclave_id, key, instance.certificate, instance.private_key, self._names, moment
            )
            credentials = LeafCredentials(
                certificate=cert.public_bytes(serialization.Encoding.DER),
                private_key=key,
                cabundle=tuple(self._levels[level].der for level in LEVELS),
                not_after=cert.not_valid_after_utc,
                not_before=cert.not_valid_before_utc,
                enclave_id=enclave_id,
            )
            if len(self._leaves) >= _MAX_CACHED_LEAVES:
                self._leaves = {
                    k: v for k, v in self._leaves.items() if v.not_after > moment
                }
                if len(self._leaves) >= _MAX_CACHED_LEAVES:
                    self._leaves.clear()
            self._leaves[enclave_id] = credentials
            return credentials

    # ---------------------------------------------------------------- accessors

    @property
    def region(self) -> str:
        return self._names.region

    @property
    def instance_id(self) -> str:
        """The parent instance id in the instance certificate's CN (default for enclaves)."""
        return self._names.instance_id

    @property
    def root_certificate(self) -> x509.Certificate:
        return self._levels["root"].certificate

    @property
    def root_der(self) -> bytes:
        return self._levels["root"].der

    @property
    def root_pem(self) -> bytes:
        return self.root_certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def root_sha256(self) -> str:
        """The root's SHA-256 fingerprint, lower-case hex (what verifiers can pin)."""
        return hashlib.sha256(self.root_der).hexdigest()

    def certificates(self) -> tuple[tuple[str, x509.Certificate], ...]:
        """The current chain as (level name, certificate), root first."""
        with self._lock:
            return tuple((level, self._levels[level].certificate) for level in LEVELS)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Cheap issuer check (names and key identifiers; no signature verification)."""
    if child.issuer != parent.subject:
        return False
    try:
        aki = child.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = parent.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return False
    return aki.key_identifier == ski.digest



def _exists(directory: Path) -> bool:
    return (directory / storage.CONFIG_FILE).is_file() and storage.level_path(directory, "root").is_file()
