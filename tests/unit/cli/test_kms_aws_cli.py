"""The AWS CLI (v1, from PyPI, unmodified) against ``nitro-emu kms serve``.

The CLI is installed once into its own venv under the user cache (its botocore pin must not
meet the test environment's boto3), keyed by the awscli version pip picks.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.cli.test_kms_cli import kms_serve

pytestmark = pytest.mark.slow
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
AWSCLI = "awscli>=1.32"  # 1.32+ knows KMS's Recipient


@pytest.fixture(scope="session")
def aws() -> Path:
    venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nitro-emu" / "awscli-venv"
    executable = venv / "bin" / "aws"
    if not executable.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", AWSCLI],
                                   capture_output=True, text=True, timeout=600)
        if installed.returncode != 0:
            reason = f"cannot install {AWSCLI} from PyPI: {installed.stderr.strip()[-300:]}"
            if IN_CI:
                pytest.fail(reason + " (CI=true: PyPI is reachable in CI)")
            pytest.skip(reason)
    return executable


def run(aws: Path, url: str, *args: str) -> dict[str, object]:
    environment = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root"),
                   "AWS_ACCESS_KEY_ID": "AKIDCLIV1", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([str(aws), "kms", *args, "--endpoint-url", url, "--output", "json"],
                          env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)) if done.stdout.strip() else {}


def test_the_aws_cli_creates_encrypts_and_decrypts(aws: Path, nitro_home: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"from the aws cli")
    with kms_serve("--memory") as url:
        key = run(aws, url, "create-key", "--description", "cli v1")["KeyMetadata"]
        assert key["Arn"].startswith("arn:aws:kms:us-east-1:111122223333:key/")  # type: ignore[index]
        run(aws, url, "create-alias", "--alias-name", "alias/cli-v1", "--target-key-id", key["KeyId"])  # type: ignore[index]
        blob = run(aws, url, "encrypt", "--key-id", "alias/cli-v1", "--plaintext", f"fileb://{tmp_path / 'secret.bin'}",
                   "--encryption-context", "app=cli")["CiphertextBlob"]
        (tmp_path / "blob.bin").write_bytes(base64.b64decode(str(blob)))
        plain = run(aws, url, "decrypt", "--ciphertext-blob", f"fileb://{tmp_path / 'blob.bin'}",
                    "--encryption-context", "app=cli")["Plaintext"]
        assert base64.b64decode(str(plain)) == b"from the aws cli"
        aliases = run(aws, url, "list-aliases")["Aliases"]
        assert [a["AliasName"] for a in aliases] == ["alias/cli-v1"]  # type: ignore[union-attr, index]
