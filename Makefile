# Two commands on a fresh machine: `make demo` and `make test`. Both install first if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SYSDEPS_STAMP := $(VENV)/.system-deps
TORCH_VERSION ?= 2.13.0
SAMPLE := data/sample

.PHONY: install system-deps demo test test-slow bench clean-sample
install: $(STAMP) $(SYSDEPS_STAMP)

# torch first, pinned: it takes the machine's local CPU wheel (or the CUDA build on a GPU box);
# the project declares only a range 2.13.0 satisfies, so nothing later pulls a second torch
# (tests/test_install.py checks the environment after install).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

# System libraries the wheels load (libusb for pyrealsense2, Mesa EGL for headless MuJoCo):
# apt-get installs the missing ones when root, else one line says which to install. Checked once
# (the stamp); `sudo make system-deps` checks and installs again.
$(SYSDEPS_STAMP): scripts/system_deps.sh | $(STAMP)
	bash scripts/system_deps.sh
	touch $(SYSDEPS_STAMP)

system-deps: | $(STAMP)
	bash scripts/system_deps.sh
	touch $(SYSDEPS_STAMP)

# The main job: build + validate the sample, then train the tiny SmolVLA on it (rgb+depth+force).
# The demo's runs share one folder per invocation, so the evaluation finds the policy just trained.
DEMO_DIR := outputs/demo/$(shell date +%Y-%m-%d_%H-%M-%S)
DEMO_SIM := sim.width=320 sim.height=240 sim.wrist_width=320 sim.wrist_height=240
demo: install
	$(PY) -m rlbench_sms.data.sample $(SAMPLE) --overwrite
	$(PY) -m rlbench_sms.data.validate $(SAMPLE)
	$(PY) train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train
	$(PY) evaluate.py policy_path=$(DEMO_DIR)/train/policy/best episodes=5 episode_time_s=15 $(DEMO_SIM) \
	    hydra.run.dir=$(DEMO_DIR)/evaluate

test: install
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install $(SAMPLE)/meta/info.json
	$(PY) benchmarks/depth_codec.py
	$(PY) benchmarks/video_codec.py $(SAMPLE)
	$(PY) benchmarks/dataloader.py $(SAMPLE) --modality rgb+depth+force
	$(PY) benchmarks/train_throughput.py --dataset $(SAMPLE)
	$(PY) benchmarks/sim_step.py
	$(PY) benchmarks/expert_success.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/async_vs_sync.py

$(SAMPLE)/meta/info.json: | install
	$(PY) -m rlbench_sms.data.sample $(SAMPLE)

clean-sample:
	rm -rf $(SAMPLE)
