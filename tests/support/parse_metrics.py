"""Parses Prometheus text from stdin with the reference parser (prometheus_client) and prints
the families as JSON: {name: {"type": T, "samples": [[sample name, labels, value], ...]}}.
Exits non-zero when the text does not parse. Used by tests/it/status_page.rs."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
print(json.dumps(families))
