"""legation.controller.commands."""
