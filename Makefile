# Thin wrapper over tasks.py (invoke). `make help` lists the targets.
#   make lab-whisper-lora [PROFILE=auto|smoke|full] [RUNTIME=auto|docker|native] [SET="learning_rate=0"]
#   make lab-quantization VARIANT=course   (a lab variant: the course's pinned libraries)
#   make lab-deepspeed-zero NPROC=2        (processes per node, one per card: the profile's nproc_per_node)
#   make lab-llama2-sft VARIANT=npu        (the Ascend NPU variant: images/ascend)
#   make lab-bert-yelp IMAGE=cuda12        (the CUDA 12 image; default: chosen from the driver and GPU)
#   make notebook-moe [NOTEBOOK_PORT=8888]   (JupyterLab with the lab's notebook, on 127.0.0.1)
#   make test [LAB=whisper-lora]
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
INVOKE := $(VENV)/bin/invoke
PROFILE ?= auto
RUNTIME ?= auto
SET ?=
VARIANT ?=
LAB ?=
BATCH_SIZES ?=
ARCH ?=
DEVICE ?=
NPROC ?=
NOTEBOOK_PORT ?= 8888

.PHONY: help list images smoke test doctor venv report

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22
	@echo "lab-<name>            Build, run and verify one lab; labs: $$(ls labs/*/lab.yaml | cut -d/ -f2 | paste -sd' ')"
	@echo "                      PROFILE=auto|smoke|full RUNTIME=auto|docker|native SET=\"key=value ...\" [VARIANT=course|npu] [NPROC=N] [IMAGE=cuda|cuda12]"
	@echo "notebook-<name>       JupyterLab on 127.0.0.1:NOTEBOOK_PORT (8888) with the lab's notebook and kernel (in its container when Docker answers)"
	@echo "bench-<name>          Full-profile step on random weights: peak memory, samples/s (BATCH_SIZES=1,4,16)"
	@echo "                      on a CPU: ARCH=tiny DEVICE=cpu (the same step at tiny scale)"

$(VENV)/.installed: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: the tooling needs Python >= 3.11 ($(PYTHON) is older): set PYTHON=/path/to/python3.11" >&2; exit 2; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "error: $(PYTHON) cannot create virtualenvs (no ensurepip). Debian/Ubuntu: sudo apt-get install python3.11-venv" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q --require-hashes -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed ## Create the tooling virtualenv (.venv)

lab-%: $(VENV)/.installed
	$(INVOKE) run --lab $* --profile $(PROFILE) --runtime $(RUNTIME) --set "$(SET)" --variant "$(VARIANT)" --nproc "$(NPROC)" --image "$(or $(IMAGE),auto)"

notebook-%: $(VENV)/.installed
	$(INVOKE) notebook --lab $* --profile $(PROFILE) --runtime $(RUNTIME) --set "$(SET)" --variant "$(VARIANT)" --image "$(or $(IMAGE),auto)" --port $(NOTEBOOK_PORT)

bench-%: $(VENV)/.installed
	$(INVOKE) bench --lab $* --runtime $(RUNTIME) $(if $(BATCH_SIZES),--batch-sizes $(BATCH_SIZES)) $(if $(ARCH),--arch $(ARCH)) $(if $(DEVICE),--device $(DEVICE))

list: $(VENV)/.installed ## List the labs
	@$(INVOKE) list

images: $(VENV)/.installed ## Build the shared CUDA image (BASE_IMAGE=...); IMAGE=cuda12 its CUDA 12 flavor; IMAGE=ascend the Ascend one
	$(INVOKE) images --name $(or $(IMAGE),cuda)

smoke: $(VENV)/.installed ## Run every lab's smoke profile natively and verify it
	@for lab in $$(ls labs/*/lab.yaml | cut -d/ -f2); do $(INVOKE) run --lab $$lab --profile smoke --runtime native || exit 1; done

test: $(VENV)/.installed ## The whole test suite (LAB=<name> for one lab, LAB=<a>,<b> for several)
	$(INVOKE) test $(if $(LAB),--lab $(LAB))

report: $(VENV)/.installed ## Write outputs/report.html: every lab's newest runs, checks, plots, manifests
	$(INVOKE) report

doctor: $(VENV)/.installed ## Check Docker, the NVIDIA runtime, the GPU and Ascend NPUs (npu-smi, driver, mounts)
	$(INVOKE) doctor $(if $(LAB),--lab $(LAB))
