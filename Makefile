# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs install clean

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

clean:
	rm -rf $(VENV) .site demo_output
