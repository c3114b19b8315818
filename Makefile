# streamml: two commands. `make up` runs the whole loop; `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install up test lab system-deps readme lock export clean-nbs help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' Makefile | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the dependency list or the lock changes; the project is installed editable.
$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name streamml --display-name "streamml (.venv)" >/dev/null
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project (idempotent)

system-deps:  ## Debian packages the tests need: MariaDB server, Chromium, wrk, Java 17 and Maven (Apache Kafka)
	@missing=""; \
	 [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	 command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	 command -v mvn >/dev/null || missing="$$missing maven"; \
	 command -v chromium >/dev/null || missing="$$missing chromium"; \
	 command -v wrk >/dev/null || missing="$$missing wrk"; \
	 if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

up: install  ## run the whole loop on the embedded broker, SQLite and a demo stream (Ctrl-C stops it)
	$(BIN)/streamml up --demo

test: install system-deps  ## set up and run every test (what CI runs)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/test.sh

lab: install  ## JupyterLab on nbs/ with the project's kernel
	$(BIN)/jupyter lab --no-browser --allow-root --notebook-dir=nbs --MappingKernelManager.default_kernel_name=streamml

export:  ## notebooks -> package, clean notebooks, README from nbs/index.ipynb
	$(BIN)/python scripts/check_sync.py --fix

readme: export

lock:  ## record the exact versions installed now (commit requirements.lock)
	$(BIN)/pip freeze --exclude-editable | grep -v '^streamml' > requirements.lock
