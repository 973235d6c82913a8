"""The AWS Nitro Enclaves Root G1 certificate (public AWS material, nitro-facts §2.3).

AWS publishes it at https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip
(``root.pem``); every genuine attestation document carries it as ``cabundle[0]``.

Shipping it here does not make the verifier trust it: ``verify_attestation_document`` trusts
only the roots its caller names (``trusted_roots=[AWS_NITRO_ROOT_G1_PEM]`` for real
documents, ``nitro-emu verify --aws-root`` on the command line).
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["AWS_NITRO_ROOT_G1_FINGERPRINT", "AWS_NITRO_ROOT_G1_PEM"]

#: ``C=US, O=Amazon, OU=AWS, CN=aws.nitro-enclaves``, valid 2019-10-28 .. 2049-10-28.
AWS_NITRO_ROOT_G1_PEM: bytes = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""

#: SHA-256 of the DER, as AWS's "Verifying the root of trust" page gives it.
AWS_NITRO_ROOT_G1_FINGERPRINT: str = (
    "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B"
)


def _der_of(pem: bytes) -> bytes:
    body = b"".join(line for line in pem.splitlines() if line and not line.startswith(b"-----"))
    return base64.b64decode(body, validate=True)


# Refuse to import a corrupted copy: the constant must be AWS's certificate, byte for byte.
if hashlib.sha256(_der_of(AWS_NITRO_ROOT_G1_PEM)).hexdigest().upper() != (
    AWS_NITRO_ROOT_G1_FINGERPRINT
):  # pragma: no cover - only a corrupted source file reaches this
    raise ImportError("fake_nsm.aws_root: the AWS Nitro root PEM does not match its fingerprint")
