# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs docs-outputs install clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sbi-vi demo --output-dir demo_output

test: $(STAMP)
	$(VENV)/bin/ruff check sbi_vi tests benchmarks tutorials
	$(VENV)/bin/ruff format --check sbi_vi tests benchmarks tutorials
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir .site
	$(PY) -m pytest -n 2 sbi_vi tests

lint: $(STAMP)
	$(VENV)/bin/ruff check sbi_vi tests benchmarks tutorials
	$(VENV)/bin/ruff format sbi_vi tests benchmarks tutorials

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir .site

# Run the tutorials cell by cell and commit what they print and draw (docs/tutorials/outputs/);
# the docs build only reads those files. The full runs take about an hour on two busy cores;
# DOCS_OUTPUTS_ARGS="--only 03_ppl_svi" redoes one tutorial, "--quick" uses the quick budgets.
DOCS_OUTPUTS_ARGS ?=
docs-outputs: $(STAMP)
	MPLBACKEND=Agg $(PY) docs/_ext/render_tutorials.py $(DOCS_OUTPUTS_ARGS)

clean:
	rm -rf $(VENV) .site demo_output

# Benchmark against sbi==0.27.0 in its own venv (benchmarks/README.md). The full grid takes
# hours; `make bench BENCH_ARGS=--quick` is a smoke test, `BENCH_ARGS="--methods rKL"` one slice.
BENCH_VENV ?= .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV) || python3 -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet "torch==2.13.0"
	echo "torch==2.13.0" > $(BENCH_VENV)/constraints.txt
	$(BENCH_PY) -m pip install --quiet -c $(BENCH_VENV)/constraints.txt -e ".[dev]" "sbi==0.27.0"
	touch $(BENCH_STAMP)

.PHONY: bench
bench: $(BENCH_STAMP)
	$(BENCH_PY) benchmarks/vi_engine.py $(BENCH_ARGS)
	$(BENCH_PY) benchmarks/vi_engine.py --report
