"""legation.api.v1alpha1."""
