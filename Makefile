# faceforge: `make demo` runs the end-to-end job on real LFW, `make test` runs the test suite, `make docs` builds
# the documentation site into site/.
# Both create .venv and install what is needed on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FACEFORGE_DATA ?= $(abspath ../shared/data)
export FACEFORGE_DATA
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test test-all test-fast lint format docs bench clean

$(BIN)/faceforge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,dlib,serve,browser-test,docs]'
	$(BIN)/faceforge fetch mtcnn
	$(BIN)/faceforge fetch yunet
	$(BIN)/faceforge fetch sface || echo "faceforge fetch sface failed (no network?): the service falls back to dlib" >&2
	touch $@

setup: $(BIN)/faceforge

demo: setup
	$(BIN)/faceforge align --images $(FACEFORGE_DATA)/lfw/images \
		--landmarks $(FACEFORGE_DATA)/lfw/landmarks_mtcnn_5pts_250px.csv --landmark-offset=-48,-48 \
		--out $(DEMO_OUT)/lfw_aligned
	$(BIN)/faceforge train lfw_mobilefacenet_arcface data.root=$(DEMO_OUT)/lfw_aligned \
		run.dir=$(DEMO_OUT)/run eval.pairs=null
	$(BIN)/faceforge eval --model $(DEMO_OUT)/run/checkpoints/model.pt \
		--pairs $(FACEFORGE_DATA)/lfw/pairsDevTest.txt --images $(DEMO_OUT)/lfw_aligned \
		--json $(DEMO_OUT)/eval/result.json --cache-dir $(DEMO_OUT)/embedding_cache --html
	$(BIN)/python -c "import json, sys; b = json.load(open('$(DEMO_OUT)/eval/result.json'))['benchmarks']; \
		acc = [v['summary']['accuracy'] for v in b.values()][0]; print(f'demo: pairsDevTest accuracy {acc:.2%} (bar: 80 %)'); \
		sys.exit(acc < 0.80)"

test: setup
	$(BIN)/python -m pytest -q --durations=30 -m "not full" $(PYTEST_ARGS)

test-all: setup
	$(BIN)/python -m pytest -q --durations=10 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check faceforge tests benchmarks
	$(BIN)/ruff format --check faceforge tests benchmarks

format: setup
	$(BIN)/ruff format faceforge tests benchmarks
	$(BIN)/ruff check --fix faceforge tests benchmarks

# the site from mkdocs.yml and docs/, offline; --strict: a broken link or a missing API page fails
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup
	$(BIN)/python benchmarks/train_throughput.py --data-root $(DEMO_OUT)/lfw_aligned

clean:
	rm -rf $(DEMO_OUT) runs eval_out site
