"""Leader election: TTL'd lock, renewal, fencing token, loss as a signal."""

from warmcache.leader.election import FencedWriter, LeaderElection, Leadership

__all__ = ["FencedWriter", "LeaderElection", "Leadership"]
