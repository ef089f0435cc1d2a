# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test bench bench-scale clean

$(VENV)/.runtime: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	@# the verify report is checked in a real browser: Debian's chromium
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	touch $@

demo: $(VENV)/.runtime
	rm -rf demo-in demo-out
	$(PY) -m tests.synthetic demo-in --seed 0
	$(PY) -W ignore -m pipelines.convert --input demo-in --output demo-out

test: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: $(VENV)/.test
	$(PY) -m benchmarks.convert_bench --workdir bench-data
	$(PY) -m benchmarks.stage_budget --corpus bench-data/corpus
	$(PY) -m benchmarks.manifest_bench --workdir bench-data/manifest

# make bench-scale [SIZES=10000,40000,160000] [WORKERS=2]: tiny files, many series, manifest + convert
SIZES   ?= 10000,40000,160000
WORKERS ?= 2
bench-scale: $(VENV)/.test
	$(PY) -m benchmarks.scale_bench --workdir bench-scale-data --sizes $(SIZES) --workers $(WORKERS)

clean:
	rm -rf demo-in demo-out bench-data bench-scale-data .pytest_cache

# ---- Flex Template and Composer DAG (templates/; see templates/README.md) -----------------------
# make template-build / template-run PROJECT=... REGION=... BUCKET=... REPO=... TAG=...
# They run gcloud when it is installed, and only print the commands when it is not (or PRINT=1).
PROJECT   ?= my-project
REGION    ?= us-central1
BUCKET    ?= $(PROJECT)-dicomflow
REPO      ?= dicomflow
TAG       ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo latest)
INPUT     ?= gs://$(BUCKET)/archive
OUTPUT    ?= gs://$(BUCKET)/out
SERVICE_ACCOUNT ?= dicomflow-worker@$(PROJECT).iam.gserviceaccount.com
MAX_WORKERS ?= 50
GCLOUD    ?= gcloud
IMAGE     = $(REGION)-docker.pkg.dev/$(PROJECT)/$(REPO)/dicomflow:$(TAG)
TEMPLATE  = gs://$(BUCKET)/templates/dicomflow-convert.json
GCLOUD_DO = $(if $(PRINT)$(if $(shell command -v $(GCLOUD) 2>/dev/null),,1),@echo ,)$(GCLOUD)

.PHONY: template-build template-run test-dag

template-build:
	$(GCLOUD_DO) builds submit --project $(PROJECT) --config templates/flex/cloudbuild.yaml \
	    --substitutions _IMAGE=$(IMAGE) .
	$(GCLOUD_DO) dataflow flex-template build $(TEMPLATE) --project $(PROJECT) \
	    --image $(IMAGE) --sdk-language PYTHON --metadata-file templates/flex/metadata.json

template-run:
	$(GCLOUD_DO) dataflow flex-template run dicomflow-convert-$$(date +%Y%m%d-%H%M%S) \
	    --project $(PROJECT) --region $(REGION) --template-file-gcs-location $(TEMPLATE) \
	    --service-account-email $(SERVICE_ACCOUNT) \
	    --temp-location gs://$(BUCKET)/tmp --staging-location gs://$(BUCKET)/staging \
	    --worker-machine-type n2-highmem-4 --max-workers $(MAX_WORKERS) \
	    --additional-experiments use_runner_v2 \
	    --parameters input=$(INPUT) --parameters output=$(OUTPUT) \
	    --parameters sdk_container_image=$(IMAGE) \
	    --parameters number_of_worker_harness_threads=8 --parameters disk_size_gb=30

# The DAG tests need Airflow, which the project venv must not carry: a venv of their own.
AIRFLOW_VENV ?= .venv-airflow
PYTHON311    ?= python3.11

$(AIRFLOW_VENV)/.airflow: templates/composer/requirements-airflow.txt
	test -x $(AIRFLOW_VENV)/bin/python || $(PYTHON311) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -r templates/composer/requirements-airflow.txt
	touch $@

test-dag: $(AIRFLOW_VENV)/.airflow
	$(AIRFLOW_VENV)/bin/python -m pytest -q -p no:cacheprovider templates/composer/test_dag.py

# ---- Fuzzing: fuzz/fuzz_header.py (atheris) over the header pass and planning ---------------------
# make fuzz [FUZZ_SECONDS=60]: a fresh tmp dir holds the corpus (seeded with small real files) and any
# crash-* input; FUZZ_COLLECT=DIR records every distinct finding there instead of stopping at the first.
ATHERIS_VERSION ?= 3.0.0
FUZZ_SECONDS    ?= 60

.PHONY: fuzz

fuzz: $(VENV)/.runtime
	$(PIP) install -q atheris==$(ATHERIS_VERSION)
	dir=$$(mktemp -d -t dicomflow-fuzz-XXXXXX) && echo "fuzz corpus and crash inputs in $$dir" && \
	    $(PY) fuzz/fuzz_header.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 \
	        -artifact_prefix=$$dir/ $$dir/corpus
