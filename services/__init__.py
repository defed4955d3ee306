"""Legation's data-plane services: `authz` (ext_authz) and `ratelimit` (RLS)."""
