"""Options shared by the h2load scenarios, and the settings made from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.harness.cpu import CpuPlan
from bench.harness.load import LoadSettings, parse_setting, parse_sweep

__all__ = ["add_common", "add_load_options", "load_settings"]

FULL_SWEEP = "2x16,4x8,4x16"
QUICK_SWEEP = "4x16"


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--json``: also write the results there (they always go to bench/results/)."""
    parser.add_argument("--json", type=Path, help="also write the JSON results to this file")


def add_load_options(parser: argparse.ArgumentParser, *, default_duration: float) -> None:
    """The options of an h2load saturation/half-saturation scenario."""
    add_common(parser)
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds per measured h2load run (default {default_duration:g}; --quick 2)",
    )
    parser.add_argument("--sweep", help=f"saturation settings, connections x streams (default {FULL_SWEEP})")
    parser.add_argument("--half", default="4x16", help="connections x streams of the half-saturation run")
    parser.add_argument("--legation", help="path of the legation CLI (default: next to python)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client CPUs")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this directory")
    parser.add_argument("--only", help="comma list of targets (see the scenario's description)")


def load_settings(args: argparse.Namespace, *, default_duration: float) -> LoadSettings:
    """LoadSettings from the parsed options (``--quick``: 2 s runs, one sweep setting)."""
    quick: bool = args.quick
    return LoadSettings(
        duration=args.duration or (2.0 if quick else default_duration),
        warmup=0.5 if quick else 1.0,
        initial_warmup=1.0 if quick else 2.0,
        sweep=parse_sweep(args.sweep or (QUICK_SWEEP if quick else FULL_SWEEP)),
        half=parse_setting(args.half),
        cpus=CpuPlan.choose(pin=not args.no_pin),
    )
