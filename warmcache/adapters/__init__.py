"""Adapters: one per technology and port, built only by ``warmcache.bootstrap``."""
