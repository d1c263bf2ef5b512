# The README's two commands: `make demo` and `make test`. Both install what is missing first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: install system-deps demo test down lint bench

system-deps:
	@bash scripts/install-system-deps.sh

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

# Azurite (the Azure Blob Storage emulator the tests run against; `make test` installs it), pinned in rayetl/devazurite.py,
# into the project's .azurite/: no global npm install, so it works as root and as a normal user.
AZURITE_VERSION := $(shell sed -n 's/^AZURITE_VERSION = "\(.*\)"/\1/p' rayetl/devazurite.py)
AZURITE_STAMP := .azurite/.installed-$(AZURITE_VERSION)

$(AZURITE_STAMP):
	npm install --prefix .azurite --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)
	@touch $@

install: system-deps $(BIN)/.installed

demo: install
	$(BIN)/rayetl up
	$(BIN)/rayetl storage sample bronze/demo/stations.geojson
	$(BIN)/rayetl submit ingest_vector -p blob_name=demo/stations.geojson -p table_name=demo_stations \
		-p if_exists=replace -p 'indexes={"attributes": ["kind"], "temporal": ["installed"]}' --wait
	@echo
	@echo "The stations' features: http://127.0.0.1:8000/features/collections/geo.demo_stations/items"
	@echo "On a map:               http://127.0.0.1:8000/features/collections/geo.demo_stations/viewer.html"
	@echo "The stack keeps running: explore the API docs and the Ray dashboard above."
	@echo "Follow-up: $(BIN)/rayetl jobs   |   the job's tasks: $(BIN)/rayetl tasks <job id>"
	@echo "Stop everything: $(BIN)/rayetl down"

test: install $(AZURITE_STAMP)
	$(BIN)/python -m pytest

down:
	$(BIN)/rayetl down

lint: install
	$(BIN)/ruff check rayetl tests benchmarks
	$(BIN)/ruff format --check rayetl tests benchmarks

bench: install
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/ingest_vector.py
	$(BIN)/python benchmarks/cog.py
