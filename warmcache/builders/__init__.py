"""Build cycles: rule deficits -> placement -> agent calls -> fenced records."""

from warmcache.builders.cycle import BuildCycle
from warmcache.builders.report import CycleReport

__all__ = ["BuildCycle", "CycleReport"]
