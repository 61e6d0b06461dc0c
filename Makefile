# The two set-up commands from the README:  make study   and   make test
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= ../shared/data/chest_xray
BUDGET ?= 50
NAME ?= main
ARGS ?=

.PHONY: study test venv lint benchmark freeze serve

$(BIN)/.installed: requirements.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

venv: $(BIN)/.installed

# The study, then its input gate beside the winner (results/$(NAME)/gate/).
study: venv
	$(BIN)/python run_study.py weights fetch-offline
	$(BIN)/python run_study.py --data-dir $(DATA_DIR) --budget $(BUDGET) --name $(NAME) $(ARGS)
	$(BIN)/python run_study.py gate fit --study $${PNEUMOSCOPE_RESULTS_DIR:-results}/$(NAME) --data-dir $(DATA_DIR)

test: venv
	bash scripts/test.sh

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# No weights needed: the benchmarks time random-init backbones.
benchmark: venv
	$(BIN)/python -m benchmarks --data-dir $(DATA_DIR)

serve: venv
	PNEUMOSCOPE_DATA_DIR=$${PNEUMOSCOPE_DATA_DIR:-$(DATA_DIR)} $(BIN)/python -m service

freeze:
	$(BIN)/pip freeze > requirements.txt
