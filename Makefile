# shoal developer entry points; see README.md.
.PHONY: install images lint unit integration test demo down bench chaos

VENV := .venv/bin

install:
	scripts/install-deps.sh

images: install
	scripts/ensure-dockerd.sh
	images/build.sh

lint: install
	$(VENV)/ruff check src tests benchmarks
	$(VENV)/lint-imports --no-cache  # the layers in pyproject.toml ([tool.importlinter])
	@# pytest collects all of tests/ at once: two test modules may not share a name
	@dups=$$(find tests -name 'test_*.py' -printf '%f\n' | sort | uniq -d); \
		[ -z "$$dups" ] || { echo "test modules with the same name: $$dups"; exit 1; }

# the fuzzing plugins are for the integration tests: not loaded here
unit:
	$(VENV)/pytest -q -p no:schemathesis -p no:hypothesispytest tests/unit

integration:
	$(VENV)/pytest -q tests/integration

# The whole suite; pytest exit 5 (no test collected) is not a failure.
test: install images lint
	$(VENV)/pytest -q --durations=30 tests || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; }

# The chaos suite (docs/reliability.md): its own lab of 3 managers + 3 workers, ROUNDS faults;
# DOCKER=1 runs it against Docker's own swarm mode. tests/cluster/test_chaos.py is its short CI version.
ROUNDS ?= 11
SEED ?= 1
chaos: install images
	$(VENV)/python -m shoal.cli lab chaos --rounds $(ROUNDS) --seed $(SEED) $(if $(DOCKER),--docker)

demo: install images
	scripts/demo.sh

down:
	scripts/down.sh

bench:
	@for f in benchmarks/*.py; do \
		[ -e "$$f" ] || continue; \
		case "$$(basename "$$f")" in _*) continue;; esac; \
		echo "== $$f"; $(VENV)/python "$$f" || exit 1; \
	done
