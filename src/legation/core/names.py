"""Kubernetes-style names (DNS-1123), for the schema and for command-line flags alike. No heavy
imports: `legation up` checks its flags before it loads anything else."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_GATEWAY", "DNS_LABEL", "DNS_NAME", "LABEL_PATTERN", "dns_label"]

DEFAULT_GATEWAY = "default"
"""The gateway a controller serves, and a resource names, when none is given."""

LABEL_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(LABEL_PATTERN)
DNS_NAME = re.compile(rf"{LABEL_PATTERN}(\.{LABEL_PATTERN})*")


def dns_label(value: str) -> str:
    """`value` if it is a DNS-1123 label (a namespace or gateway name), else ValueError."""
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise ValueError(f"invalid name {value!r} (a DNS label: lowercase letters, digits, '-')")
    return value
