"""legation.core."""
