"""warmcache host agent and proxy (separately deployable, DESIGN.md §10).

Shares only the wire schema (``warmcache.wire``) and the model
(``warmcache.model``) with the service.
"""
