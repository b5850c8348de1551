"""Build cycles: rule deficits -> placement -> agent calls -> fenced records."""

from warmcache.builders.cycle import BuildCycle, CycleReport

__all__ = ["BuildCycle", "CycleReport"]
