# Two commands for newcomers: `make demo` (end to end on the embedded backend) and `make test`
# (the whole suite, including integration tests against real OpenSearch 2.19 and Elasticsearch 8.19 nodes built
# from Maven Central).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ceindex-installed

.PHONY: demo test unit integration cluster cluster-node reliability node es-node bench-encode clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ceindex.demo

test: $(STAMP)
	$(PY) -m pytest tests -v

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration -v

# The three-node OpenSearch 2.19 cluster tests (three loopback JVMs, 512 MB heap each): faults and 3-shard fusion
cluster: $(STAMP)
	$(PY) -m pytest tests/cluster -v

# Start that three-node cluster by hand (settings from docker/docker-compose.cluster.yml; Ctrl-C stops it).
cluster-node: $(STAMP)
	$(PY) -m ceindex.testing.opensearch_cluster

# Concurrency, hostile input, destructive rebuilds and serve limits (uses the real node too)
reliability: $(STAMP)
	$(PY) -m pytest tests/reliability -v

# Start the same OpenSearch node the tests use, by hand, on http://127.0.0.1:9200 (Ctrl-C stops it).
node: $(STAMP)
	$(PY) -m ceindex.testing.opensearch_node --port 9200

# The same Elasticsearch 8.19 node the tests use (security off), on http://127.0.0.1:9201 (Ctrl-C stops it).
es-node: $(STAMP)
	$(PY) -m ceindex.testing.elasticsearch_node --port 9201

clean:
	rm -rf $(VENV) docker/opensearch-node/target docker/elasticsearch-node/target
