# The two commands a user needs are `make demo` and `make test`; see README.md.
SHELL := /bin/bash
PYTEST_ARGS ?=

.PHONY: test test-unit test-cluster lint demo demo-down cluster cluster-down bench bench-cluster soak clean

test:  ## install what the tests need, then run every test
	scripts/setup.sh test
	.venv/bin/ruff check agent tests bench
	.venv/bin/mypy
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-unit:
	.venv/bin/python -m pytest tests/unit $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check agent tests bench
	.venv/bin/mypy

demo:  ## a working gateway in front of real services on a single-node swarm
	scripts/setup.sh demo
	scripts/demo.sh up

demo-down:
	scripts/demo.sh down

test-cluster:  ## the multi-node tier alone (part of make test): six Docker-in-Docker swarm nodes
	scripts/setup.sh test
	.venv/bin/python -m pytest tests/cluster -m cluster $(PYTEST_ARGS)

cluster:  ## the article's cluster on this machine: six swarm nodes in containers, keepalived
	scripts/setup.sh demo
	.venv/bin/python -m tests.support.cluster up

cluster-down:
	.venv/bin/python -m tests.support.cluster down

bench:
	scripts/setup.sh bench
	.venv/bin/python -m bench

bench-cluster:  ## bench part 7 alone (VIP failover on the six-node cluster), its figures into docs/
	scripts/setup.sh bench
	.venv/bin/python -m bench --only cluster --write-docs

soak:
	scripts/setup.sh test
	.venv/bin/python -m pytest tests/soak -m soak $(PYTEST_ARGS)

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache
