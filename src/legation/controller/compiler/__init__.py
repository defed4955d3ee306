"""legation.controller.compiler."""
