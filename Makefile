# Two commands for a fresh machine: `make app` (install, then start the explorer) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser lint app test bench clean

install: $(STAMP)

# Re-installs only when the dependency list changes; torch/torchvision come pinned from pyproject.toml.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[test,ray]"
	touch $(STAMP)

app: install
	$(BIN)/streamlit run app.py --server.headless true --browser.gatherUsageStats false

# The default suite first (under 5 minutes on 2 cores), then the slow end-to-end tests (browser, Ray, kills),
# each with its time.
test: install browser lint
	$(BIN)/python -m pytest --durations=10
	$(BIN)/python -m pytest -m slow --durations=0

# The house rules (docs/ARCHITECTURE.md): lint, and imports that run downward with no cycle.
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The browser the explorer's end-to-end test drives: Debian's Chromium (that test is skipped, saying why, where it
# cannot be installed).
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && { apt-get install -y chromium chromium-driver \
		|| { apt-get update && apt-get install -y chromium chromium-driver; }; }; } \
		|| echo "make: could not install Chromium; the explorer's browser test will be skipped"

clean:
	rm -rf $(VENV) $(BENCH_VENV) *.egg-info .pytest_cache

# Benchmark peers (torchattacks, plenoptic, lucent) live in their own venv: torchattacks pins an old `requests`
# that cannot coexist with streamlit, so this environment gets phosphene's dependencies minus streamlit.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
DEPS_NO_APP := $(BIN)/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print(' '.join(repr(d) for d in p['dependencies'] + p['optional-dependencies']['bench'] if not d.startswith('streamlit')))"

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -e . --no-deps
	eval $(BENCH_VENV)/bin/python -m pip install $$($(DEPS_NO_APP))
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	for f in benchmarks/*.py; do echo "== $$f"; $(BENCH_VENV)/bin/python $$f || exit 1; done
