"""Embedded defaults: packaged models and datasets, fetched once into a cache and verified."""
