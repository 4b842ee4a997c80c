"""Tasks: what is predicted, how it is scored. Orthogonal to strategies."""

IGNORE = -100  # label id that cross-entropy skips: prompt tokens, padding, a word's later sub-tokens
