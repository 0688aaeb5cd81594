"""Shared code of the soft-label toolkit: one implementation of each concept, used by
``relabel/`` and ``validate/`` alike (store format, crop/flip/mix replay, models, data)."""

__version__ = "0.1.0"
