"""legation.controller.xds."""
