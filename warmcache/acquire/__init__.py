"""Acquire: modes as selectors, atomic all-or-nothing claims."""

from warmcache.acquire.claimer import Claimed, Claimer
from warmcache.acquire.modes import SELECTORS, satisfiable

__all__ = ["SELECTORS", "Claimed", "Claimer", "satisfiable"]
