"""Adapter layers tunelab implements itself, where no maintained library provides them (docs/architecture.md)."""
