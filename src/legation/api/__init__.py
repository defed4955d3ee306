"""legation.api."""
