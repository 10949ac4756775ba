"""Parses a Vouch /metrics answer in both exposition formats with the Prometheus project's
Python client, and requires help text on every metric family.

Usage: check_metrics.py TEXT_FILE OPENMETRICS_FILE
"""

import pathlib
import sys

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text


def check(name, parse, text):
    problems = []
    try:
        families = list(parse(text))
    except Exception as e:  # noqa: BLE001 - a refusal is a finding
        return [f"{name}: does not parse: {e!r}"], 0
    if not families:
        problems.append(f"{name}: no metric families")
    for family in families:
        if not family.documentation.strip():
            problems.append(f"{name}: {family.name} has no help text")
        if family.type == "unknown":
            problems.append(f"{name}: {family.name} has no type")
    return problems, len(families)


def main() -> int:
    text = pathlib.Path(sys.argv[1]).read_text()
    openmetrics = pathlib.Path(sys.argv[2]).read_text()
    p1, n1 = check("text format 0.0.4", parse_text, text)
    p2, n2 = check("OpenMetrics", parse_openmetrics, openmetrics)
    problems = p1 + p2
    if n1 != n2:
        problems.append(f"the text format has {n1} families, OpenMetrics {n2}")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"both formats parse: {n1} metric families, each with help text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
