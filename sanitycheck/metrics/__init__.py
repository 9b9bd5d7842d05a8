"""Metrics with metadata (name, higher-is-better, category), stateless and batched."""

from .base import Metric, MetricInfo, metric

__all__ = ["Metric", "MetricInfo", "metric"]
