# The two commands of the README: `make run` and `make test`. Both set up
# what they need first (apt packages when missing, .venv/, the package).
VENV := .venv
STAMP_RUN := $(VENV)/.setup-run
STAMP_TEST := $(VENV)/.setup-test
DEPS := setup.cfg pyproject.toml scripts/setup.sh
ARGS ?=

.PHONY: run test lint unit bench docs clean

run: $(STAMP_RUN)
	$(VENV)/bin/warmcache quickstart $(ARGS)

test: $(STAMP_TEST) lint
	$(VENV)/bin/python -m pytest $(ARGS)

unit: $(STAMP_TEST)
	$(VENV)/bin/python -m pytest tests/unit tests/contract $(ARGS)

bench: $(STAMP_TEST)
	$(VENV)/bin/python bench/all.py

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs: $(STAMP_TEST)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

$(STAMP_RUN): $(DEPS)
	scripts/setup.sh run
	touch $@

$(STAMP_TEST): $(DEPS)
	scripts/setup.sh test
	touch $@ $(STAMP_RUN)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .site
