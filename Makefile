# The two commands that matter: `make run` runs the gateway, `make test` runs the tests.
# Each creates the virtual environment and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo discord-bot bench test lint pytest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
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

# Speed and memory on the embedded stack; results in docs/benchmarks.md (about 25 minutes).
bench: install
	$(BIN)/pip install --quiet 'py-spy>=0.4'
	$(BIN)/python -m bench $(if $(DATABASE_URL),--database-url '$(DATABASE_URL)') $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
