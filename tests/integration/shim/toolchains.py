"""Build the test programs of the interceptor tests, cached by source hash.

Binaries go to ``$XDG_CACHE_HOME/nitro-emu/programs/<hash>/`` (``~/.cache/nitro-emu``): the
hash covers the sources, the command and the toolchain's version, so a change rebuilds. A
missing toolchain skips the test with the package to install, and fails under ``CI=true``
(``.ci/run`` installs them).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PROGRAMS = Path(__file__).resolve().parent / "programs"
GOPATH = "/usr/share/gocode"  # Debian's golang-golang-x-sys-dev installs x/sys here


def missing(reason: str) -> None:
    """Skip, or fail under CI=true (where .ci/run installed the toolchain)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run installs this)")
    pytest.skip(reason)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nitro-emu" / "programs"


def _version(tool: str) -> str:
    for flag in ("--version", "version"):
        result = subprocess.run([tool, flag], capture_output=True, text=True, check=False, timeout=30)
        if result.returncode == 0:
            return result.stdout.splitlines()[0] if result.stdout else ""
    return ""


def cached_build(name: str, sources: Sequence[Path], command: Sequence[str], *,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Run ``command`` (``{out}`` is the output path) once per content hash; the binary."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(repr((list(command), _version(command[0]), sorted((env or {}).items()))).encode())
    final = cache_root() / digest.hexdigest()[:20]
    if (final / name).is_file():
        return final / name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        argv = [part.replace("{out}", str(staging / name)) for part in command]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600,
                                env={**os.environ, **(env or {})}, cwd=cwd)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
        try:
            staging.rename(final)
        except OSError:
            if not (final / name).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / name


def c_probe(*, static: bool) -> Path:
    """``programs/probe.c``: static with musl (or ``cc -static``), or dynamically linked."""
    source = PROGRAMS / "probe.c"
    if static:
        compiler = shutil.which("musl-gcc") or shutil.which("cc")
        if compiler is None:
            missing("no C compiler for a static binary: apt-get install musl-tools")
        return cached_build("probe-static", [source], [compiler or "cc", "-static", "-O1", "-o", "{out}", str(source)])
    compiler = shutil.which("cc")
    if compiler is None:
        missing("no C compiler: apt-get install gcc libc6-dev")
    return cached_build("probe", [source], [compiler or "cc", "-O1", "-o", "{out}", str(source)])


def go_attest() -> Path:
    """``programs/goattest``: Go, CGO_ENABLED=0, GOPATH mode against Debian's x/sys."""
    go = shutil.which("go")
    if go is None:
        missing("no Go toolchain: apt-get install golang-go golang-golang-x-sys-dev")
    if not (Path(GOPATH) / "src/golang.org/x/sys/unix").is_dir():
        missing("no golang.org/x/sys in GOPATH: apt-get install golang-golang-x-sys-dev")
    source = PROGRAMS / "goattest" / "main.go"
    gocache = cache_root() / "gocache"
    env = {"GO111MODULE": "off", "GOPATH": GOPATH, "CGO_ENABLED": "0", "GOFLAGS": "", "GOPROXY": "off",
           "GOCACHE": str(gocache)}
    return cached_build("goattest", [source], [go or "go", "build", "-o", "{out}", "main.go"],
                        env=env, cwd=source.parent)


RUST_TARGET = "x86_64-unknown-linux-musl"


def rust_attest() -> Path:
    """``programs/rustattest``: aws-nitro-enclaves-nsm-api from crates.io, static musl."""
    cargo, rustup = shutil.which("cargo"), shutil.which("rustup")
    if cargo is None:
        missing("no Rust toolchain: install rustup (https://rustup.rs) and cargo")
    if rustup is not None:
        installed = subprocess.run([rustup, "target", "list", "--installed"], capture_output=True, text=True,
                                   check=False, timeout=60).stdout.split()
        if RUST_TARGET not in installed:
            missing(f"the Rust target {RUST_TARGET} is not installed: rustup target add {RUST_TARGET}")
    project = PROGRAMS / "rustattest"
    sources = [project / "Cargo.toml", project / "Cargo.lock", project / "src" / "main.rs"]
    target_dir = cache_root() / "cargo-target"
    script = (f"{cargo} build --quiet --locked --release --target {RUST_TARGET} "
              f"--manifest-path {project / 'Cargo.toml'} --target-dir {target_dir} "
              f"&& cp {target_dir / RUST_TARGET / 'release' / 'rustattest'} {{out}}")
    try:
        return cached_build("rustattest", sources, ["sh", "-c", script])
    except AssertionError as error:
        if "crates.io" in str(error) or "index" in str(error):
            missing(f"cargo could not fetch aws-nitro-enclaves-nsm-api from crates.io: {str(error)[-300:]}")
        raise
