"""Black-box tuning: adapt a model through queries only, every call counted."""
