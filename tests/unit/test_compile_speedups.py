"""What the compile pipeline does for speed must not change what it computes: the paused garbage
collector comes back, cached parsers still raise every time, and the path check is unchanged."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator

import pytest

from legation.api.v1alpha1 import fields
from legation.api.v1alpha1.fields import parse_service
from legation.api.v1alpha1.ratelimit_annotation import RateKey, RateLimitAnnotationError, parse_rate_limit
from legation.controller.compiler.compile import Tenancy, compile_resources, gc_paused
from legation.controller.compiler.ratelimits import descriptor_entry


@pytest.fixture
def gc_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_gc_paused_nests_and_restores(gc_enabled: None) -> None:
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError
    assert gc.isenabled()


def test_gc_paused_leaves_a_disabled_collector_disabled(gc_enabled: None) -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()
    compile_resources([], tenancy=Tenancy())
    assert not gc.isenabled()


def test_overlapping_pauses_in_threads_end_with_the_collector_on(gc_enabled: None) -> None:
    inside, release = threading.Event(), threading.Event()

    def long_pause() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=long_pause)
    thread.start()
    inside.wait(5)
    with gc_paused():  # starts while the other thread's pause is on
        release.set()
        thread.join(5)
        assert not gc.isenabled()  # the other pause ended, this one has not
    assert gc.isenabled()


def test_compile_leaves_the_collector_on(gc_enabled: None) -> None:
    compile_resources([], tenancy=Tenancy())
    assert gc.isenabled()


def test_cached_parsers_raise_every_time_and_share_results() -> None:
    for _ in range(2):
        with pytest.raises(RateLimitAnnotationError):
            parse_rate_limit("100/fortnight")
        with pytest.raises(ValueError, match="port must be a number"):
            parse_service("svc:http")
    assert parse_rate_limit("10/s per ip") is parse_rate_limit("10/s per ip")
    assert parse_service("a.b:80") is parse_service("a.b:80")
    assert descriptor_entry(RateKey("ip")) is descriptor_entry(RateKey("ip"))


def test_path_check_rejects_exactly_whitespace_question_mark_and_hash() -> None:
    # The regex replaced a per-character str.isspace() test: same verdict for every code point.
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        expected = c.isspace() or c in "?#"
        assert (fields._PATH_FORBIDDEN.search(c) is not None) == expected, hex(code)
