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

# The whole suite: unit and integration tests, with the lab tests beside them (scripts/run-tests.sh).
test: install images lint
	scripts/run-tests.sh

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
