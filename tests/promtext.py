"""Reading the server's /metrics text in tests, with prometheus_client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count", "_info")


def families(text: str) -> dict[str, list[Sample]]:
    """Family name (as the parser names it: ``inspect_requests`` for ``inspect_requests_total``) -> samples."""
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def samples(text: str) -> list[Sample]:
    return [sample for group in families(text).values() for sample in group]


def sample_names(text: str) -> set[str]:
    """Every sample name (with its ``_total``/``_bucket``/``_sum``/``_count``/``_created`` suffix)."""
    return {sample.name for sample in samples(text)}


def label_names(text: str) -> set[str]:
    """Every label name carried by a sample (``le`` of histogram buckets included)."""
    return {label for sample in samples(text) for label in sample.labels}


def label_values(text: str, label: str) -> set[str]:
    return {sample.labels[label] for sample in samples(text) if label in sample.labels}


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels``.

    0.0 when the metric is declared (``# TYPE``) but has no sample with these labels yet
    (a labelled counter before its first increment); an ``AssertionError`` when no family
    could hold a sample of that name, so a misspelt name cannot read as 0.
    """
    known = families(text)
    if not any(name in {family + suffix for suffix in SUFFIXES} for family in known):
        raise AssertionError(f"no metric {name!r} on /metrics (families: {sorted(known)})")
    for group in known.values():
        for sample in group:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
