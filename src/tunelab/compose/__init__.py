"""Several tasks on one base model: bundles of trained runs (composition's first part)."""
