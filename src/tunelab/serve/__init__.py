"""`tunelab serve`: trained runs and bundles over HTTP, many adapters on one base model."""
