"""Training: the Trainer built from (model, task, strategy), cached features, resource accounting."""
