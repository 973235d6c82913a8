# Everything a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo compose bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m emulator.demo

# The demo as a compose stack where no registry answers: local images first, then the stack;
# exits with the parent's status. (With a registry: `docker compose up --build` is enough.)
COMPOSE ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo docker compose)
compose: $(VENV)/.installed
	$(PY) -m emulator.demo.compose
	NITRO_EMU_COMPOSE_BASE=nitro-emu-demo/tools:latest NITRO_EMU_COMPOSE_INSTALL=none \
		$(COMPOSE) up --build --abort-on-container-exit --exit-code-from parent; \
		status=$$?; $(COMPOSE) down -v --timeout 5; exit $$status

bench: $(VENV)/.installed
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
