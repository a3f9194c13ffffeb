# scorelab: `make book` builds the HTML book, `make test` runs every test. Both set up .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The command Jupyter Book's guide teaches, from the root (_config.yml and _toc.yml live here).
BOOK_BUILD := $(VENV)/bin/jupyter-book build . -W --keep-going
# nbval on chosen notebooks (make nbval NOTEBOOKS="book/03_annealed_langevin.ipynb ..."): each runs
# in a fresh kernel; cells marked NBVAL_CHECK_OUTPUT compare output. make test does not run it.
NBVAL := $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider -n 2 --dist loadscope
NOTEBOOKS ?= book solutions

.PHONY: install browser book test test-package test-notebooks nbval bench bench-quick strip exercises exercises-check notebooks notebooks-check grade clean clean-cache

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.txt -e ".[book,test]"
	@touch $@

# scripts/execute_notebooks.py executes the notebooks into the build's cache, one per CPU
# core, and empties the cache when lib/ changed; the build then renders them from the cache.
book: install
	$(PY) scripts/execute_notebooks.py
	$(BOOK_BUILD)
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# Every chapter and solution is executed once, by the book build (which fails on any error);
# tests/test_notebook_outputs.py compares the cells nbval checks with that execution, and must
# not be skipped here (SCORELAB_REQUIRE_BUILD=1).
test: export SCORELAB_REQUIRE_BUILD = 1
test: install browser book test-package

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

# Two workers, one test file each at a time (the tests share no files; slow ones spread out),
# one thread each: two workers of two threads on two cores slow some tests down tenfold.
test-package: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -p no:cacheprovider -n 2 --dist loadfile

# The checked outputs of every notebook, against the book build (built first if outdated).
test-notebooks: export SCORELAB_REQUIRE_BUILD = 1
test-notebooks: book
	$(PY) -m pytest tests/test_notebook_outputs.py -p no:cacheprovider

nbval: install
	$(NBVAL) $(NOTEBOOKS)

bench: install
	$(PY) -m scorelab.bench

bench-quick: install
	$(PY) -m scorelab.bench --quick

# Execute notebooks in place and keep only the outputs nbval checks (run after editing a chapter).
strip: install
	$(PY) scripts/strip_outputs.py book/*.ipynb solutions/*.ipynb

# exercises/ is generated from solutions/ (the single source): regenerate, or check it is up to date.
# make_exercises also rewrites each chapter's exercise table, so the chapters' copies follow.
exercises: install
	$(PY) scripts/make_exercises.py
	$(PY) scripts/make_notebooks.py

exercises-check: install
	$(PY) scripts/make_exercises.py --check

# notebooks/ holds the chapters as plain Jupyter notebooks (Colab, Binder), generated from book/:
# MyST roles, directives and captions turned into plain Markdown, with the book's numbers.
notebooks: install
	$(PY) scripts/make_notebooks.py

notebooks-check: install
	$(PY) scripts/make_notebooks.py --check

# The execution cache does not see changes in lib/ (make book clears it when lib/ changed).
clean-cache:
	rm -rf _build/.jupyter_cache

clean:
	rm -rf _build

# Grade students' notebooks: every DIR/*.ipynb runs in a fresh kernel with the hidden cases on,
# and DIR/grades.csv gets one row per exercise (student, exercise, passed, feedback).
GRADE_TIMEOUT ?= 600
GRADE_CELL_TIMEOUT ?= 120
grade: install
	@if [ -z "$(SUBMISSIONS)" ]; then echo "usage: make grade SUBMISSIONS=DIR" >&2; exit 2; fi
	$(PY) -m scorelab.grading "$(SUBMISSIONS)" --solutions solutions \
		--timeout $(GRADE_TIMEOUT) --cell-timeout $(GRADE_CELL_TIMEOUT)
