# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment (.venv) on first use and install the project into it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: demo test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job, offline, on the tiny preset: a GLB, a manifest and contact sheets of what the critic saw.
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/vlm3d-ttg generate examples/toy_robot.png \
		--prompt "a small toy robot with a round head" \
		--preset tiny --seed 0 --out $(OUT)/demo.glb --save-views $(OUT)/views --plot

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:
	rm -rf $(OUT) .pytest_cache
