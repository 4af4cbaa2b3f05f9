# smile-gateway: `make run` runs the gateway on its embedded defaults (127.0.0.1:8080, SQLite,
# emission off, no broker needed); `make test` sets up everything on a fresh machine (venv,
# packages, Debian's activemq, postgresql and libxml2-utils), starts ActiveMQ, the STOMP plugin
# of the machine's RabbitMQ and PostgreSQL, and runs ruff, mypy and pytest. See README.md.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PG_URL ?= postgresql://smile_test:smile_test@127.0.0.1:5432/smile_test

.PHONY: run test lint typecheck pytest bench broker broker-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m gateway serve

test: $(STAMP)
	scripts/system-deps.sh
	$(PY) -m ruff check .
	$(PY) -m mypy
	scripts/activemq.sh start
	scripts/rabbitmq-stomp.sh start || echo "make test: no RabbitMQ STOMP; its compatibility tests skip (and fail under CI=true)" >&2
	scripts/postgres.sh start || echo "make test: no PostgreSQL; its tests skip (and fail under CI=true)" >&2
	$(PY) -m pytest; status=$$?; scripts/activemq.sh stop; scripts/rabbitmq-stomp.sh stop; exit $$status

broker:
	scripts/activemq.sh start

broker-stop:
	scripts/activemq.sh stop

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	scripts/system-deps.sh bench
	$(PY) bench/validate.py
	$(PY) bench/translate.py
	scripts/activemq.sh start
	$(PY) bench/publish.py
	if scripts/postgres.sh start; then $(PY) bench/webhook.py --pg-url $(PG_URL); else $(PY) bench/webhook.py; fi
	$(PY) bench/webhook_cost.py
	$(PY) bench/forward.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
