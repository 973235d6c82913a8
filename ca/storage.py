"""The test CA on disk: one PEM file per level, written atomically, under a file lock.

Layout of the CA directory (mode 0700)::

    ca.json        region and parent instance id the chain is named after
    root.pem       root certificate + private key (0600)
    regional.pem   regional certificate + private key (0600)
    zonal.pem      zonal certificate + private key (0600)
    instance.pem   instance certificate + private key (0600)
    root.crt       the root certificate alone (0644), for verifiers to pin
    .lock          flock(2) taken while the CA is created or a level re-issued

A level's certificate and key share one file so that ``os.replace`` swaps them together: a
process loading the CA while another re-issues a level sees the old pair or the new one,
never a mix.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.errors import CAStorageError
from ca.profiles import INSTANCE_ID_RE, Names

CONFIG_FILE = "ca.json"
ROOT_CERT_FILE = "root.crt"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True)
class StoredLevel:
    """One level as read from disk; the private key is parsed on first use."""

    certificate: x509.Certificate
    der: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def from_objects(cls, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> StoredLevel:
        level = cls(certificate, certificate.public_bytes(serialization.Encoding.DER), _key_pem(key))
        object.__setattr__(level, "_key", key)
        return level

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = self.__dict__.get("_key")
        if key is None:
            loaded = serialization.load_pem_private_key(self.key_pem, password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise TypeError("CA key is not an EC key")
            key = loaded
            object.__setattr__(self, "_key", key)
        return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def level_path(directory: Path, level: str) -> Path:
    return directory / f"{level}.pem"


def ensure_directory(directory: Path) -> None:
    """Create the CA directory with mode 0700 (and tighten it if it already exists)."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & 0o777 != 0o700:
            directory.chmod(0o700)
    except OSError as error:
        raise CAStorageError(directory, f"cannot create the directory ({error.strerror})") from error


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not loosen a key file
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise CAStorageError(path, f"cannot write ({error.strerror})") from error


def write_level(directory: Path, level: str, stored: StoredLevel) -> None:
    """Persist a level's certificate and key in one 0600 file (and ``root.crt`` for the root)."""
    cert_pem = stored.certificate.public_bytes(serialization.Encoding.PEM)
    _write_atomic(level_path(directory, level), cert_pem + stored.key_pem, 0o600)
    if level == "root":
        _write_atomic(directory / ROOT_CERT_FILE, cert_pem, 0o644)


def read_level(directory: Path, level: str) -> StoredLevel | None:
    """The level stored in ``directory``, or None when its file does not exist."""
    path = level_path(directory, level)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CAStorageError(path, f"cannot read ({error.strerror})") from error
    blocks = {match.group(1): match.group(0) for match in _PEM_BLOCK.finditer(data)}
    if b"CERTIFICATE" not in blocks or b"PRIVATE KEY" not in blocks:
        raise CAStorageError(path, "expected a CERTIFICATE and a PRIVATE KEY PEM block")
    try:
        certificate = x509.load_pem_x509_certificate(blocks[b"CERTIFICATE"])
        der = certificate.public_bytes(serialization.Encoding.DER)
    except ValueError as error:
        raise CAStorageError(path, f"the certificate does not parse ({error})") from error
    return StoredLevel(certificate, der, blocks[b"PRIVATE KEY"])


def read_config(directory: Path) -> Names | None:
    """The region and instance id of the CA in ``directory``, or None if there is none."""
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CAStorageError(path, f"not readable JSON ({error})") from error
    if not isinstance(raw, dict):
        raise CAStorageError(path, "expected a JSON object")
    region, instance_id = raw.get("region"), raw.get("instance_id")
    if not isinstance(region, str) or not region or not isinstance(instance_id, str):
        raise CAStorageError(path, "missing 'region' or 'instance_id'")
    if not INSTANCE_ID_RE.match(instance_id):
        raise CAStorageError(path, f"instance_id {instance_id!r} is not i-<17 hex digits>")
    return Names(region=region, instance_id=instance_id)


def write_config(directory: Path, names: Names) -> None:
    document = {"format": FORMAT_VERSION, "region": names.region, "instance_id": names.instance_id}
    _write_atomic(directory / CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode(), 0o600)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on the CA directory (creation and re-issue only)."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise CAStorageError(path, f"cannot open the lock file ({error.strerror})") from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
