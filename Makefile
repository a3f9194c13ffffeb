# scorelab: `make book` builds the HTML book, `make test` runs every test. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The command Jupyter Book's guide teaches, from the root (_config.yml and _toc.yml live here).
BOOK_BUILD := $(VENV)/bin/jupyter-book build . -W --keep-going
# Notebook tests: each notebook runs in a fresh kernel; cells marked NBVAL_CHECK_OUTPUT compare output.
NBVAL := $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -n 2 --dist loadscope

.PHONY: install browser book test test-package test-notebooks bench bench-quick strip exercises exercises-check clean clean-cache

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.txt -e ".[book,test]"
	@touch $@

book: install
	$(BOOK_BUILD)
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: install browser book test-package test-notebooks

# The browser test (tests/test_browser.py) drives headless Chromium; install it when we may.
# It also serves MathJax 3 from $(VENV)/mathjax in place of the CDN, so that the formulas
# really render (and render without errors) on a machine without internet.
MATHJAX := $(VENV)/mathjax/node_modules/mathjax/es5/tex-mml-chtml.js
browser: install
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing Chromium for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "WARNING: could not install chromium: the browser test will be skipped"; \
	else echo "No chromium and no root: the browser test will be skipped"; fi
	@if [ -f $(MATHJAX) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
		echo "Installing MathJax 3 for the browser test"; \
		npm install --prefix $(VENV)/mathjax --no-audit --no-fund --silent mathjax@3.2.2 \
			|| echo "WARNING: could not install MathJax: the browser test checks the maths markup only"; \
	else echo "No npm: the browser test checks the maths markup only, not MathJax's rendering"; fi

test-package: install
	$(PY) -m pytest tests -p no:cacheprovider

test-notebooks: install
	$(NBVAL) book solutions

bench: install
	$(PY) -m scorelab.bench

bench-quick: install
	$(PY) -m scorelab.bench --quick

# Execute notebooks in place and keep only the outputs nbval checks (run after editing a chapter).
strip: install
	$(PY) scripts/strip_outputs.py book/*.ipynb solutions/*.ipynb

# exercises/ is generated from solutions/ (the single source): regenerate, or check it is up to date.
exercises: install
	$(PY) scripts/make_exercises.py

exercises-check: install
	$(PY) scripts/make_exercises.py --check

# The execution cache does not see changes in lib/: clear it after changing the package.
clean-cache:
	rm -rf _build/.jupyter_cache

clean:
	rm -rf _build
