"""legation.controller.serving."""
