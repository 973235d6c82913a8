"""Helpers of the runtime integration tests (importable: ``from runtime_helpers import ...``)."""

from __future__ import annotations

import time
from pathlib import Path

#: The probe enclave: facts as one JSON line, then an NSM attestation, then it waits.
#: Writing a number N to /run/nitro-emu/allocate makes it allocate N MiB (the OOM test).
PROBE_APP = r'''
import base64, errno, json, os, socket, sys, time

def status_field(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return line.split()[1]

def try_connect(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
    finally:
        s.close()

def try_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def key_files():
    # PEM private keys anywhere (the marker is split so this file does not match itself).
    begin, end = b"-----BEGIN", b"PRIVATE KEY" + b"-----"
    found = []
    for dirpath, dirnames, filenames in os.walk("/"):
        if dirpath in ("/proc", "/sys", "/dev"):
            dirnames[:] = []
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 65536:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                if begin in data and end in data:
                    found.append(path)
            except OSError:
                pass
    return found

facts = {
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "connect_gateway": try_connect("172.17.0.1", 2375),
    "connect_internet": try_connect("1.1.1.1", 443),
    "write_root": try_write("/probe-file"),
    "write_usr": try_write("/usr/probe-file"),
    "write_tmp": try_write("/tmp/probe-file"),
    "cap_eff": status_field("CapEff"),
    "cap_bnd": status_field("CapBnd"),
    "no_new_privs": status_field("NoNewPrivs"),
    "nproc": len(os.sched_getaffinity(0)),
    "env": {k: v for k, v in os.environ.items() if k.startswith("NITRO_EMU")},
    "mounts": [line.split()[4] for line in open("/proc/self/mountinfo")],
    "key_files": key_files(),
    "cgroup_memory_limit": None,
}
for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
    try:
        facts["cgroup_memory_limit"] = open(path).read().strip()
        break
    except OSError:
        pass
from fake_nsm.client import NsmClient
with NsmClient() as nsm:
    doc = nsm.get_attestation_doc(nonce=b"probe-nonce", user_data=b"probe")
    facts["module_id"] = nsm.describe_nsm().module_id
facts["attestation_b64"] = base64.b64encode(doc).decode()
print("FACTS " + json.dumps(facts), flush=True)
hold = []
while True:
    try:
        amount = int(open("/run/nitro-emu/allocate").read().strip() or 0)
    except (OSError, ValueError):
        amount = 0
    if amount:
        print(f"allocating {amount} MiB", flush=True)
        for _ in range(amount):
            hold.append(bytearray(os.urandom(16)) * (1 << 16))  # 1 MiB, touched
        print("allocated", flush=True)
    time.sleep(0.1)
'''



def minimum_memory(eif: Path) -> int:
    """nitro-cli's minimum --memory for this EIF: 4 x its size in MiB, rounded up."""
    return -(-eif.stat().st_size // (1 << 20)) * 4



def wait_for_output(enclave_id: str, marker: str, timeout: float = 30.0) -> str:
    """The enclave's output once a line starting with ``marker`` appeared in it."""
    from emulator.enclave.runtime import enclave_logs

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = enclave_logs(enclave_id)
        if any(line.startswith(marker) for line in text.splitlines()):
            return text
        time.sleep(0.1)
    raise AssertionError(f"no {marker!r} line from {enclave_id} within {timeout} s; output:\n{text[-2000:]}")




def put_in_runtime_dir(home: Path, enclave_id: str, cid: int, name: str, text: str) -> None:
    """Make ``/run/nitro-emu/<name>`` appear in a running enclave, whatever its transport.

    The host transport shares ``run/<cid>`` with the enclave; the engine transport shares a
    volume, reached through the Docker API (the enclave's container writes nothing there).
    """
    import io
    import tarfile

    import docker

    from emulator.enclave.state import read_record
    from emulator.settings import Settings

    record = read_record(Settings(home=home), enclave_id)
    if record is None or record.extra.get("transport", "host") == "host":
        (home / "run" / str(cid) / name).write_text(text)
        return
    data = text.encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        member = tarfile.TarInfo(name)
        member.size, member.mode = len(data), 0o644
        tar.addfile(member, io.BytesIO(data))
    client = docker.from_env()
    try:
        client.containers.get(f"nitro-emu-{enclave_id}").put_archive("/run/nitro-emu", archive.getvalue())
    finally:
        client.close()
