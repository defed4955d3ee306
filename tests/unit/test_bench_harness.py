"""The bench harness's pure parts: h2load/wrk output, percentiles, CPU stats, the report."""

from __future__ import annotations

import math

import pytest

from bench.harness.cpu import parse_cpu_busy
from bench.harness.grpc_wire import grpc_frame, grpc_unframe
from bench.harness.h2load import H2Counts, h2_duration, parse_h2load_output, parse_log
from bench.harness.load import RunOutcome, grpc_code_outcome, parse_sweep, split_cpu, sweep_text
from bench.harness.metrics import parse_envoy_stats, prometheus_counters
from bench.harness.report import TargetRow, errors_text, load_table, markdown_table, ratio
from bench.harness.stats import percentile
from bench.harness.wrk import parse_wrk_output

H2LOAD_OUT = """\
starting benchmark...
finished in 2.00s, 3875.50 req/s, 120.5KB/s
requests: 7751 total, 7767 started, 7751 done, 7749 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 7749 2xx, 0 3xx, 1 4xx, 1 5xx
traffic: 241.52KB (247314) total
"""

WRK_OUT = """\
Running 10s test @ http://127.0.0.1:8080/m500/steady
  1 threads and 8 connections
  Latency Distribution
     50%  412.00us
     75%  600.00us
     90%    1.10ms
     99%    3.30ms
  259153 requests in 10.00s, 40.1MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  25915.30
"""


def test_h2load_summary_is_parsed() -> None:
    counts = parse_h2load_output(H2LOAD_OUT)
    assert counts == H2Counts(
        requests=7751, succeeded=7749, failed=2, errored=1, timeout=0, status_2xx=7749, status_other=2
    )
    assert counts + counts == H2Counts(15502, 15498, 4, 2, 0, 15498, 4)


def test_h2load_without_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot parse h2load output"):
        parse_h2load_output("connect: Connection refused\n")


def test_h2load_log_keeps_200_latencies() -> None:
    log = "1700000000000\t200\t1200\n1700000000001\t503\t90\n1700000000002\t200\t800\nbad line\n"
    assert parse_log(log) == [1200, 800]


def test_h2load_duration_is_whole_milliseconds() -> None:
    assert h2_duration(2.0) == "2000ms"
    assert h2_duration(0.0) == "1ms"


def test_wrk_summary_is_parsed() -> None:
    result = parse_wrk_output(WRK_OUT)
    assert (result.requests, result.non_2xx, result.socket_errors) == (259153, 4, 3)
    assert result.p99_ms == pytest.approx(3.3)
    assert result.p50_ms == pytest.approx(0.412)
    assert result.req_per_s == pytest.approx(25915.30)
    assert result.failed == 7


def test_wrk_latency_units() -> None:
    assert parse_wrk_output("99%  850.00us\n 10 requests in 1s").p99_ms == pytest.approx(0.85)
    assert parse_wrk_output("99%    1.50s\n 10 requests in 1s").p99_ms == pytest.approx(1500)
    assert parse_wrk_output("10 requests in 1s").p99_ms == 0.0
    with pytest.raises(ValueError):
        parse_wrk_output("unable to connect")


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))
    assert percentile(list(range(1, 51)), 0.99) == 50  # 50 samples: p99 is the max


def test_cpu_busy_excludes_idle_and_iowait() -> None:
    stat = "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 1 5 100 7 2 3 4 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n"
    assert parse_cpu_busy(stat, 0) == 10 + 1 + 5 + 2 + 3 + 4
    assert parse_cpu_busy(stat, 3) is None


def test_grpc_frames_round_trip() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_unframe(grpc_frame(b"abc")) == b"abc"
    with pytest.raises(ValueError):
        grpc_unframe(b"\x01\x00\x00\x00\x03abc")


def test_sweep_settings() -> None:
    assert parse_sweep("2x16,4X8") == ((2, 16), (4, 8))
    assert sweep_text([(2, 16), (4, 8)]) == "2x16, 4x8"


def test_stop_codes_within_calls_in_flight_are_cancellations() -> None:
    delta = {"grpc:OK": 1000.0, "grpc:UNKNOWN": 30.0, "grpc:CANCELLED": 2.0}
    assert grpc_code_outcome(delta, in_flight=64) == RunOutcome(cancelled=32.0)
    assert grpc_code_outcome(delta, in_flight=16).errors == {"gRPC UNKNOWN": 30.0, "gRPC CANCELLED": 2.0}
    assert grpc_code_outcome({"grpc:INTERNAL": 1.0}, in_flight=64).errors == {"gRPC INTERNAL": 1.0}
    assert grpc_code_outcome({"grpc:OK": 5.0}, in_flight=64) == RunOutcome()


def test_cpu_split_by_process() -> None:
    split = split_cpu({"envoy": 1.0, "authz": 2.0}, {"envoy": 2.0, "authz": 5.0}, 400.0)
    assert split == {"envoy": 100.0, "authz": 300.0}


def test_prometheus_and_envoy_counters() -> None:
    text = (
        "# TYPE legation_grpc_requests_total counter\n"
        'legation_grpc_requests_total{method="/x.Y/Check",code="OK"} 10\n'
        'legation_grpc_requests_total{method="/x.Y/Check",code="UNKNOWN"} 2\n'
        'legation_grpc_requests_total{method="/x.Y/Other",code="OK"} 99\n'
    )

    def namer(name: str, labels: object) -> str | None:
        assert isinstance(labels, dict)
        return f"grpc:{labels['code']}" if labels["method"].endswith("/Check") else None

    assert prometheus_counters(text, namer) == {"grpc:OK": 10.0, "grpc:UNKNOWN": 2.0}
    stats = "http.front.ext_authz.ok: 12\nhttp.front.rq_time: P0(nan,1)\ncluster.authz.x: 3\n"
    assert parse_envoy_stats(stats, "http.front.") == {"envoy:ext_authz.ok": 12.0}


def test_markdown_table() -> None:
    table = markdown_table(["target", "req/s"], [["a", "1,000"]], [False, True])
    assert table == "| target | req/s |\n|---|---:|\n| a | 1,000 |"


def test_report_cells() -> None:
    assert ratio(50.0, 100.0) == "0.50"
    assert ratio(None, 100.0) == "n/a"
    assert ratio(5.0, 0.0) == "n/a"
    assert errors_text(None) == "n/a"
    assert errors_text({}) == "0"
    assert errors_text({"gRPC UNKNOWN": 3.0, "denied": 1.0}) == "3 gRPC UNKNOWN, 1 denied"


def test_load_table_shows_failed_targets() -> None:
    table = load_table([TargetRow("in-memory", error="not ready")], None, ref_label="ceiling")
    header, rule, row = table.splitlines()
    assert header.count("|") == rule.count("|") == row.count("|")
    assert "ratio to ceiling" in header
    assert row.startswith("| in-memory | n/a |") and "not ready" in row
