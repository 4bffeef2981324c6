"""Tests of ``benchmarks/harness.py``, the plumbing every benchmark script shares."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _harness
import harness


def test_rows_round_trip_and_skip_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "rows.jsonl"
    assert harness.load_rows(path) == []
    harness.write_row(path, {"a": 1, "p": Path("x")})
    with path.open("a") as fh:
        fh.write("{not json\n\n")
    harness.write_row(path, {"a": 2})
    assert harness.load_rows(path) == [{"a": 1, "p": "x"}, {"a": 2}]


def test_latest_by_keeps_the_last_row_of_each_key() -> None:
    rows = [{"k": 1, "v": "old"}, {"k": 2, "v": "b"}, {"k": 1, "v": "new"}]
    latest = harness.latest_by(rows, lambda r: r["k"])
    assert latest == {1: {"k": 1, "v": "new"}, 2: {"k": 2, "v": "b"}}


def test_merge_c2st_copies_only_c2st_fields() -> None:
    records = [{"sample_id": "a", "khat": 0.1}, {"sample_id": "b"}]
    c2st_rows = {"a": {"sample_id": "a", "kind": "c2st", "c2st": 0.61, "c2st_cpu_s": 2.0}}
    harness.merge_c2st(records, c2st_rows)
    assert records == [
        {"sample_id": "a", "khat": 0.1, "c2st": 0.61, "c2st_cpu_s": 2.0},
        {"sample_id": "b"},
    ]


def test_c2st_output_sits_beside_the_rows() -> None:
    assert harness.c2st_output_for(Path("r/pipeline.jsonl")) == Path("r/pipeline_c2st.jsonl")


def test_replace_block_replaces_between_markers_or_appends(tmp_path: Path) -> None:
    start, end = harness.table_markers("demo")
    readme = tmp_path / "README.md"
    harness.replace_block(readme, start, end, f"{start}\nv1\n{end}")
    assert readme.read_text() == f"# Benchmarks\n\n{start}\nv1\n{end}\n"
    readme.write_text(f"intro\n{start}\nold\n{end}\nafter\n")
    harness.replace_block(readme, start, end, f"{start}\nv2\n{end}")
    assert readme.read_text() == f"intro\n{start}\nv2\n{end}\nafter\n"


def test_timer_and_timed_count_wall_and_cpu_seconds() -> None:
    timer = harness.Timer()
    spin = timer.wrap(lambda: sum(range(200_000)))
    spin()
    with timer.time():
        time.sleep(0.02)
    assert timer.calls == 2
    assert timer.wall >= 0.02 and timer.cpu > 0
    out: dict = {}
    with pytest.raises(RuntimeError), harness.timed(out, "phase"):
        raise RuntimeError("boom")
    assert set(out) == {"phase_wall_s", "phase_cpu_s"}  # recorded also when the block fails


def test_time_limit_raises_and_error_fields_mark_the_timeout() -> None:
    with pytest.raises(harness.TimeLimitExceeded, match="spin ran past"):
        with harness.time_limit(0.05, "spin"):
            time.sleep(1)
    try:
        with harness.time_limit(0.05, "spin"):
            time.sleep(1)
    except harness.TimeLimitExceeded as err:
        fields = harness.error_fields(err)
    assert fields["timed_out"] is True and fields["error"].startswith("TimeLimitExceeded")
    try:
        raise ValueError("bad")
    except ValueError as err:
        fields = harness.error_fields(err)
    assert "timed_out" not in fields and "ValueError: bad" in fields["traceback"]
    with harness.time_limit(None, "no limit"):
        pass


def test_logged_warnings_collects_and_detaches() -> None:
    import logging

    log = logging.getLogger("harness_test_logger")
    with harness.logged_warnings("harness_test_logger") as collect:
        log.warning("first %d", 1)
        log.info("not kept")
    log.warning("after")
    assert collect.messages == ["harness_test_logger: first 1"]


def test_mean_median_ratio_drop_missing_values() -> None:
    assert harness.mean([1.0, None, math.nan, 3.0]) == 2.0
    assert harness.mean([1.0, math.inf]) == math.inf
    assert harness.mean([1.0, math.inf, 3.0], finite_only=True) == 2.0
    assert harness.median([None, 5.0, 1.0, 2.0]) == 2.0
    assert harness.mean([None, math.nan]) is None
    assert harness.ratio(1.0, 4.0) == 0.25
    assert harness.ratio(None, 4.0) is None and harness.ratio(1.0, 0.0) is None


def test_cells_and_marks() -> None:
    assert harness.cell(None) == "—"
    assert harness.cell(1.234, ".2f") == "1.23"
    assert harness.cell(math.nan) == "nan" and harness.cell(math.inf) == "inf"
    assert [harness.mark(f) for f in (True, False, None)] == ["✓", "✗", "—"]


def test_option_parsers_reject_bad_values() -> None:
    parser = argparse.ArgumentParser()
    harness.add_subset_option(parser, "--tasks", ("a", "b"))
    harness.add_c2st_options(parser)
    parser.add_argument("--obs", type=harness.int_list(1, 10))
    args = parser.parse_args(["--obs", "1,3"])
    assert args.tasks == ["a", "b"] and args.obs == [1, 3] and args.c2st == "background"
    assert parser.parse_args(["--tasks", "b"]).tasks == ["b"]
    for bad in (["--tasks", "c"], ["--obs", "0"], ["--obs", "x"], ["--c2st", "later"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_output_path_prefers_output_then_quick() -> None:
    default, quick = Path("full.jsonl"), Path("quick.jsonl")
    args = argparse.Namespace(output=None, quick=False)
    assert harness.output_path(args, default, quick) == default
    args.quick = True
    assert harness.output_path(args, default, quick) == quick
    args.output = "mine.jsonl"
    assert harness.output_path(args, default, quick) == Path("mine.jsonl")


def test_c2st_runner_rejects_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        harness.C2STRunner("later", tmp_path / "rows.jsonl", tmp_path)


def test_environment_records_versions_and_code_state() -> None:
    env = harness.run_environment({"torch_again": "torch", "missing": "no-such-dist-xyz"})
    assert env["device"] == "cpu" and env["missing"] is None
    assert env["torch_again"] and len(env["sbi_vi_src_hash"]) == 12
    json.dumps(env)  # a row must serialise


def test_old_names_stay_importable_for_unconverted_scripts() -> None:
    assert _harness._fmt is harness.cell and _harness._now is harness.now
    assert _harness._Collect is harness.WarningLog and _harness.write_row is harness.write_row
