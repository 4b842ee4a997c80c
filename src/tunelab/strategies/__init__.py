"""Fine-tuning strategies: one module each, mapped by name in `registry.py`."""
