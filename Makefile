# memlab: make lab | make test | make lint | make format | make app | make clean
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8888
# Jupyter refuses to start as root (containers, CI) unless told to.
ROOT_FLAG = $$(test "$$(id -u)" = 0 && echo --allow-root)

.PHONY: venv lab test lint format app clean

venv: $(STAMP)

# Re-install only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -c constraints.txt -e '.[test]'
	touch $@

lab: venv
	@TOKEN=$$($(VPY) -c 'import secrets; print(secrets.token_hex(24))'); \
	echo ""; \
	echo "  Open this URL in your browser:"; \
	echo "  http://$(HOST):$(PORT)/lab?token=$$TOKEN"; \
	echo ""; \
	exec $(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --ServerApp.port_retries=0 \
		--no-browser --ServerApp.root_dir=labs --IdentityProvider.token=$$TOKEN $(ROOT_FLAG)

# The tests execute every notebook in labs/ in smoke mode too (tests/test_lab_notebooks.py,
# tests/test_no_compiler.py).
test: venv
	$(VPY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy memlab

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Workshop mode: the labs as apps (Voila; code hidden, widgets live) on loopback with a token.
# voila.json picks memlab's template (share/jupyter/voila/templates/memlab: Voila's lab
# template without its CDN stylesheets, so pages fetch nothing from the internet).
# `make app SMOKE=1` runs the labs with small sizes (each page is ready in seconds).
APP_PORT ?= 8866
SMOKE ?=
app: venv
	@TOKEN=$$($(VPY) -c 'import secrets; print(secrets.token_hex(24))'); \
	echo ""; \
	echo "  Open this URL in your browser:"; \
	echo "  http://$(HOST):$(APP_PORT)/voila/tree?token=$$TOKEN"; \
	echo ""; \
	MEMLAB_SMOKE=$(SMOKE) JUPYTER_PATH=$(CURDIR)/share/jupyter exec $(VENV)/bin/voila labs \
		--Voila.ip=$(HOST) --port=$(APP_PORT) --Voila.port_retries=0 --no-browser \
		--token=$$TOKEN

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
