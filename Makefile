# edged developer tasks. `make setup` then `make test` on a fresh Debian 12 / Python 3.11 box.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DATA   := data
EDGED_CACHE ?= $(HOME)/.cache/edged
export EDGED_CACHE

.PHONY: setup test run bench lint clean

setup: $(BIN)/edged $(DATA)/models/yolov3-tiny.onnx

$(BIN)/edged: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The asset fetcher verifies checksums and reuses $(EDGED_CACHE): a second clone fetches nothing.
$(DATA)/models/yolov3-tiny.onnx: $(BIN)/edged edged/tools/assets.py edged/tools/darknet.py edged/tools/darknet_graph.py
	$(BIN)/python -m edged.tools.assets fetch $(DATA)
	$(BIN)/edged model import-darknet $(DATA)/models/yolov3-tiny/yolov3-tiny.cfg \
		$(DATA)/models/yolov3-tiny/yolov3-tiny.weights $@

test:
	$(BIN)/pytest -m "not gpu and not tensorrt"

run:
	$(BIN)/edged run --config dev/edged.yaml

bench:
	mkdir -p bench/results
	$(BIN)/edged bench model --model $(DATA)/models/yolov3-tiny.onnx --sizes 416,320 \
		--threads 2 --image $(DATA)/media/bus.jpg --out bench/results/model-$$(hostname)-$$(date +%Y%m%d-%H%M%S).json

lint:
	$(BIN)/ruff check edged tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
