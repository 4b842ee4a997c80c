"""User and catalog data: loading into a text/label table, validation, and deterministic splits."""
