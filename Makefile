# cot-proxy: the LLM gateway's make targets for this Python project.
#
#   make build    a virtualenv in $(VENV) with the pinned requirements (requirements.txt + constraints.txt)
#   make run      build, then start the proxy (Gunicorn, gunicorn.conf.py) with COT_PROXY_CONFIG=$(CONFIG)
#   make test     build plus requirements-dev.txt, then python -m pytest $(PYTEST_ARGS)
#   make clean    remove caches (__pycache__, .pytest_cache, .ruff_cache, .cache), and $(VENV) if make made it
#   make image    ./build.sh: the Docker image (TAG, REGISTRY, PUSH as there)
#
# Variables (make VAR=value or the environment):
#   CONFIG=config.yaml   the routing file `make run` starts with (cp config.example.yaml config.yaml)
#   VENV=.venv           where `make build` installs; an activated virtualenv ($VIRTUAL_ENV) is used as is
#   PYTHON=python3       the interpreter that creates $(VENV); VENV_FLAGS are extra `python -m venv` options
#   PYTEST_ARGS=-q       what `make test` passes to pytest (e.g. PYTEST_ARGS="-q tests/unit")
#   HOST, PORT, ...      the proxy's own variables reach `make run` unchanged (PORT=8080 make run)

PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
VENV_FLAGS ?=
CONFIG ?= config.yaml
PYTEST_ARGS ?= -q
BIN = $(VENV)/bin
VENV_IN_TREE = $(patsubst $(CURDIR)/%,./%,$(abspath $(VENV)))
INSTALLED = $(VENV)/.cot-proxy-requirements
DEV_INSTALLED = $(VENV)/.cot-proxy-dev-requirements

.DEFAULT_GOAL := build
.PHONY: all build run test clean image

all: build

build: $(INSTALLED)

$(INSTALLED): requirements.txt constraints.txt
	@if [ ! -x "$(BIN)/python" ]; then \
	  echo "==> Creating $(VENV)"; \
	  "$(PYTHON)" -m venv $(VENV_FLAGS) "$(VENV)" && touch "$(VENV)/.cot-proxy-made"; \
	fi
	@echo "==> Installing requirements.txt into $(VENV)"
	"$(BIN)/python" -m pip install -q -r requirements.txt
	"$(BIN)/python" -m compileall -q app cot_proxy.py gunicorn.conf.py
	@touch "$@"
	@echo "Build complete: $(BIN)/gunicorn -c gunicorn.conf.py cot_proxy:app (or make run)"

run: build
	@if [ ! -f "$(CONFIG)" ]; then \
	  echo "make run: $(CONFIG) not found: cp config.example.yaml config.yaml, or make run CONFIG=path" >&2; \
	  exit 1; \
	fi
	@echo "==> Starting cot-proxy with COT_PROXY_CONFIG=$(CONFIG)"
	COT_PROXY_CONFIG="$(CONFIG)" exec "$(BIN)/python" -m gunicorn -c gunicorn.conf.py cot_proxy:app

test: $(DEV_INSTALLED)
	"$(BIN)/python" -m pytest $(PYTEST_ARGS)

$(DEV_INSTALLED): $(INSTALLED) requirements-dev.txt
	"$(BIN)/python" -m pip install -q -r requirements-dev.txt
	@touch "$@"

clean:
	@echo "==> Cleaning up"
	find . -path ./.git -prune -o -path "$(VENV_IN_TREE)" -prune -o -type d -name __pycache__ -prune \
	  -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .cache
	@if [ -f "$(VENV)/.cot-proxy-made" ]; then echo "rm -rf $(VENV)"; rm -rf "$(VENV)"; \
	else rm -f "$(INSTALLED)" "$(DEV_INSTALLED)"; fi
	@echo "Cleanup complete."

image:
	./build.sh
