"""Scraping and reading real expositions: helpers shared by the monitoring tests (no tests here)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inferpool import keys

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, frozenset], float]


def scrape_text(url: str) -> str:
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.text


def parse(text: str) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(url: str) -> Samples:
    return parse(scrape_text(url))


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(n == name and want <= ls for (n, ls) in samples)


def names_in(text: str) -> set[str]:
    """Every sample name and every family named by a TYPE line."""
    out = set(re.findall(r"^# TYPE (\S+)", text, flags=re.M))
    out |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return out


def worker_metrics_url(client, node: str, timeout: float = 15.0) -> str:
    """The address a worker advertises in its heartbeat."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        addr = client.hget(keys.worker(node), "metrics")
        if addr:
            return f"http://{addr.decode()}/metrics"
        time.sleep(0.1)
    raise AssertionError(f"worker {node} advertised no metrics address")
