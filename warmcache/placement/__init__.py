"""Placement (DESIGN.md §7): validators drop hosts, weighted preferences rank
the rest; every decision is explained by the pipeline."""

from warmcache.placement.pipeline import Decision, PlacementPipeline, default_pipeline
from warmcache.placement.request import PlacementRequest

__all__ = ["Decision", "PlacementPipeline", "PlacementRequest", "default_pipeline"]
