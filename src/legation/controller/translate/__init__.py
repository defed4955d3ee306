"""legation.controller.translate."""
