"""Tasks: what is predicted, how it is scored. Orthogonal to strategies."""
