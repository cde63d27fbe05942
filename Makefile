# The book's two commands, as root on Debian 12 or Ubuntu 24.04:
#
#   make book   build the book, executing every chapter against real containers
#   make test   run every test: pytest, nbval over the chapters, exercise checks
#
# Both install what they need first (host packages, a .venv) and can be run
# again at any time.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8888

.PHONY: all setup host test-host book test lab clean

all: book

host:
	bash lab/host-setup.sh

test-host:
	bash lab/host-setup.sh --test

# The venv is rebuilt when the pins change. Jupyter refuses to run as root
# unless told it may; the lab runs as root, so the venv says so.
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --config-settings editable_mode=compat -e .
	$(PY) -m compileall -q mini_docker
	mkdir -p $(VENV)/etc/jupyter
	echo '{"ServerApp": {"allow_root": true}}' > $(VENV)/etc/jupyter/jupyter_server_config.json
	touch $(STAMP)

setup: host $(STAMP)

book: setup
	$(VENV)/bin/jupyter-book build --all -W --keep-going .
	@echo "The book is in _build/html/index.html"

test: test-host $(STAMP)
	$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval-sanitize.cfg \
		-p no:cacheprovider tests chapters

lab: setup
	$(VENV)/bin/jupyter lab --ip=$(HOST) --port=$(PORT) --no-browser

clean:
	rm -rf _build
