"""``vsock-proxy``: nitro-cli's allowlist, its refusals word for word, and the proxying itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.unit.vsock.test_vsock_forward import serve_in_thread, tcp_echo_server  # noqa: F401 - a fixture
from tests.unit.vsock.vsock_helpers import ROOT, FakeEnclave, make_enclave  # noqa: F401 - a fixture

from emulator.vsock.proxy import VsockProxyError, check_allowlist, load_allowlist, vsock_proxy

#: The shape of AWS's /etc/nitro_enclaves/vsock-proxy.yaml (flow mappings in a block list).
AWS_STYLE = """allowlist:
- {address: kms.us-east-1.amazonaws.com, port: 443}
- {address: localhost, port: %d}
"""

ENCLAVE_CLIENT = (
    "import socket\nfrom emulator.vsock import enclave as v\n"
    "s = v.connect_parent(8000, timeout=20)\ns.sendall(b'through the proxy')\n"
    "s.shutdown(socket.SHUT_WR)\ngot = b''\n"
    "while c := s.recv(65536):\n    got += c\nprint(got.decode())\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vsock-proxy.yaml"
    path.write_text(text)
    return path


def test_the_aws_file_format_parses(tmp_path: Path) -> None:
    services = load_allowlist(write(tmp_path, AWS_STYLE % 9000))
    assert [(s.address, s.port) for s in services] == [("kms.us-east-1.amazonaws.com", 443), ("localhost", 9000)]
    block = "allowlist:\n  - address: 127.0.0.1\n    port: 4000\n"
    assert [(s.address, s.port) for s in load_allowlist(write(tmp_path, block))] == [("127.0.0.1", 4000)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "Could not open the file"),
        ("allowlist: [unclosed", "Bad yaml format"),
        ("services: []\n", "No allowlist field"),
        ("allowlist:\n- {port: 443}\n", "No address field"),
        ("allowlist:\n- {address: a.example, port: https}\n", "No port field or invalid type"),
    ],
)
def test_a_bad_config_file_is_refused_in_nitro_clis_words(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "absent.yaml" if content is None else write(tmp_path, content)
    with pytest.raises(VsockProxyError, match=f"^{message}$"):
        check_allowlist("127.0.0.1", 443, path)


def test_matching_is_by_port_then_name_or_resolved_address(tmp_path: Path) -> None:
    config = write(tmp_path, AWS_STYLE % 9000)
    assert check_allowlist("localhost", 9000, config) in {"127.0.0.1", "::1"}
    assert check_allowlist("127.0.0.1", 9000, config, family=socket.AF_INET) == "127.0.0.1"  # via `localhost`
    for host, port in (("localhost", 9001), ("127.0.0.2", 9000)):
        with pytest.raises(VsockProxyError, match="^The given address and port are not allowed$"):
            check_allowlist(host, port, config, family=socket.AF_INET)
    with pytest.raises(VsockProxyError, match="^The given address and port are not allowed$"):
        check_allowlist("localhost", 9000, None)


def test_an_allowed_service_is_reached_from_the_enclave(
    make_enclave: Callable[[int], FakeEnclave], tcp_echo_server: tuple[str, int], tmp_path: Path,  # noqa: F811
) -> None:
    host, port = tcp_echo_server
    enclave = make_enclave(16)
    config = write(tmp_path, f"allowlist:\n- {{address: {host}, port: {port}}}\n")
    with vsock_proxy(8000, host, port, config=config) as forwarder:
        serve_in_thread(forwarder)
        assert enclave.run_code(ENCLAVE_CLIENT).strip() == "through the proxy"


def test_a_refused_pair_never_listens(nitro_home: Path, tmp_path: Path) -> None:
    config = write(tmp_path, AWS_STYLE % 9000)
    with pytest.raises(VsockProxyError, match="^Error at checking the allowlist: The given address"):
        vsock_proxy(8000, "127.0.0.1", 9999, config=config)
    assert not (nitro_home / "run" / "parent" / "8000").exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emulator.cli", "vsock-proxy", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )


def test_cli_refusals_read_as_vsock_proxys(nitro_home: Path, tmp_path: Path) -> None:
    config = str(write(tmp_path, AWS_STYLE % 9000))
    refused = _cli("8000", "127.0.0.1", "9999", "--config", config)
    assert refused.returncode == 1
    assert refused.stderr == 'Error: "Error at checking the allowlist: The given address and port are not allowed"\n'
    assert _cli("8000", "127.0.0.1", "99999", "--config", config).stderr == 'Error: "Remote port is not valid"\n'
    assert _cli("x", "127.0.0.1", "9000", "--config", config).stderr == 'Error: "Local port is not valid"\n'
    assert _cli("8000", "localhost", "9000", "-w", "z", "--config", config).stderr == (
        'Error: "Number of workers is not valid"\n'
    )
    missing = _cli("8000", "localhost", "9000", "--config", str(tmp_path / "none.yaml"))
    assert missing.stderr == 'Error: "Error at checking the allowlist: Could not open the file"\n'
