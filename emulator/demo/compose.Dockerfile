# The demo's parent as a container (docker-compose.yml): nitro-emu drives the engine through
# the mounted Docker socket, with a real supervisor per enclave on the engine transport.
#
# BASE: a Python image from a registry (the default), where `pip install` brings the
# dependencies; or, where no registry answers, the local tools image that
# `python -m emulator.demo.compose` prepares (INSTALL=none: it has them already).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG INSTALL=pip
COPY pyproject.toml README.md /src/
COPY ca /src/ca
COPY fake_nsm /src/fake_nsm
COPY emulator /src/emulator
COPY examples /src/examples
RUN if [ "$INSTALL" = pip ]; then pip install --no-cache-dir /src; fi
ENV PYTHONPATH=/src:/opt/site PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
CMD ["python3", "-m", "emulator.demo"]
