"""``grounding bench all`` and ``grounding bench superpoints``: the table block's parse and merge, an end-to-end
quick run into a scratch doc, a failing benchmark, and the superpoint timing on a small generated mesh.
Timings are never asserted."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from grounding.bench.all import Measurement, plan, run_all, select
from grounding.bench.table import BEGIN, END, Row, merge_rows, parse_block, render_block, rewrite_doc

GROUNDING = str(Path(sys.executable).with_name("grounding"))
HERE, THERE = "CPU X, 2 cores, no GPU, torch 2", "CPU Y, 16 cores, NVIDIA H100, torch 2"
INTRO = "# Benchmarks\n\nIntro prose | with a pipe.\n\n"
PROSE = "## Prepare\n\nProse that must survive, with `code` and a table:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


def row(name: str, figure: str, machine: str, kind: str = "prepare") -> Row:
    return Row(name, figure, f"grounding bench {kind} --repeats 3", machine, "2026-11-24", "abc1234")


@pytest.fixture(scope="module")
def tiny_scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--work-dir`` holding the generated ``tiny`` preset (six ~30k-vertex scans) in ``tiny/``."""
    from datasets.synthetic import generate_synthetic

    base = tmp_path_factory.mktemp("bench")
    generate_synthetic(base / "tiny", preset="tiny", seed=0)
    return base


def test_rewrite_keeps_prose_and_other_machines_and_replaces_this_machines_rows() -> None:
    old = [row("prepare, scannet preset", "0.2 s", HERE), row("prepare, scannet preset", "0.1 s", THERE),
           row("RG-SAN forward, cuda 32", "a | b", THERE, "rgsan"),
           row("superpoints, mesh", "1 s", HERE, "superpoints")]
    doc = INTRO + render_block(old) + "\n\n" + PROSE
    assert parse_block(doc) == old  # the pipe in a figure round-trips

    new = [row("prepare, scannet preset", "0.3 s", HERE)]
    merged = merge_rows(parse_block(doc), new, HERE)  # a full run: all of this machine's rows go
    out = rewrite_doc(doc, merged)
    assert out.startswith(INTRO) and out.endswith("\n\n" + PROSE)
    assert parse_block(out) == [new[0], old[1], old[2]]  # ordered by kind, then machine

    only = merge_rows(parse_block(doc), new, HERE, replaced={"prepare, scannet preset"})  # --only prepare
    assert [r.figure for r in only] == ["0.3 s", "0.1 s", "1 s", "a | b"]
    assert [r.kind for r in only] == ["prepare", "prepare", "superpoints", "rgsan"]


def test_block_is_created_under_the_intro_and_bad_tables_are_refused() -> None:
    out = rewrite_doc(INTRO + PROSE, [row("prepare, tiny preset", "1 s", HERE)])
    assert out.index(BEGIN) > out.index("Intro prose") and out.index(END) < out.index("## Prepare")
    assert out.replace(out[out.index(BEGIN):out.index(END) + len(END)] + "\n\n", "") == INTRO + PROSE
    assert rewrite_doc("# Title\n", []).endswith(END + "\n")
    assert parse_block(INTRO + PROSE) == []
    with pytest.raises(ValueError, match="cells"):
        parse_block(f"{BEGIN}\n| only | three | cells |\n{END}\n")
    with pytest.raises(ValueError, match="at most one"):
        parse_block(f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n")


def test_plan_commands_parse_and_only_selects() -> None:
    from grounding.bench.all import _parse, labels

    for quick in (False, True):
        jobs = plan(quick=quick, cuda=True)
        names = [n for j in jobs for n in labels(_parse(j.argv))]
        # prepare, 2 superpoints, 3 rgsan forward + 2 rgsan train steps (CUDA), 4 backbone on CPU + 4 on CUDA in
        # fp32 + 4 on CUDA in the bf16 protocol
        assert len(names) == len(set(names)) == 1 + 2 + 3 + 2 + 12
        train = [_parse(j.argv) for j in jobs if j.name.startswith("rgsan-train-cuda")]
        assert [a.precision for a in train] == ["32", "16-mixed"] and all(a.train for a in train)
        bf16 = [j.argv for j in jobs if j.name.endswith("-cuda-bf16")]
        assert len(bf16) == 4 and all(_parse(a).dtype == "bfloat16" and _parse(a).device == "cuda" for a in bf16)
        assert quick or all((_parse(a).warmup, _parse(a).repeats) == (20, 100) for a in bf16)
    assert [j.name for j in select(plan(), "superpoints,rgsan-cpu")] == ["superpoints", "rgsan-cpu"]
    assert len(select(plan(), "backbone")) == 4
    with pytest.raises(ValueError, match="rgsan-cuda-32"):
        select(plan(cuda=False), "rgsan-cuda-32")


def test_quick_never_writes_the_repository_doc() -> None:
    from grounding.cli.main import main

    repo_doc = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    before = repo_doc.read_bytes()
    assert main(["bench", "all", "--quick", "--doc", str(repo_doc)]) == 2  # refused before anything runs
    assert repo_doc.read_bytes() == before


def test_bench_all_quick_end_to_end_writes_a_valid_table(tiny_scans: Path, tmp_path: Path) -> None:
    from grounding.bench import machine_description

    doc = tmp_path / "benchmarks.md"
    other = row("prepare, scannet preset", "0.1 s", THERE)
    doc.write_text(INTRO + render_block([other]) + "\n\n" + PROSE)
    proc = subprocess.run([GROUNDING, "bench", "all", "--quick", "--only", "superpoints,prepare", "--doc", str(doc),
                           "--work-dir", str(tiny_scans)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/2] prepare" in proc.stdout and "[2/2] superpoints: done" in proc.stdout
    text = doc.read_text()
    assert text.startswith(INTRO) and text.endswith(PROSE)
    rows = parse_block(text)
    assert [r.benchmark for r in rows] == ["prepare, tiny preset", "prepare, scannet preset",
                                           "superpoints, mesh (tiny scan)", "superpoints, point cloud (tiny scan)"]
    mine = [r for r in rows if r != other]
    assert all(r.machine == machine_description() and r.figure.startswith("quick: ") for r in mine)
    assert mine[0].command == f"grounding bench prepare --preset tiny --repeats 1 --work-dir {tiny_scans}/tiny"


def test_a_failing_benchmark_is_reported_and_the_others_still_written(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import grounding.bench.all as bench_all

    def fake(args) -> Measurement:
        if args.bench == "superpoints":
            raise RuntimeError("segmentation exploded")
        return Measurement("report", ["0.500 s/scene median"])

    monkeypatch.setattr(bench_all, "measure", fake)
    doc, lines = tmp_path / "b.md", []
    rc = run_all(select(plan(quick=True), "prepare,superpoints"), doc, quick=True, isolate=False, out=lines.append)
    assert rc == 1
    log = "\n".join(lines)
    assert "superpoints FAILED" in log and "segmentation exploded" in log and "failed: superpoints" in log
    rows = parse_block(doc.read_text())
    failed = "FAILED: RuntimeError: segmentation exploded"
    assert [r.figure for r in rows] == ["quick: 0.500 s/scene median", failed, failed]


def test_superpoint_bench_on_a_small_mesh(tiny_scans: Path) -> None:
    from grounding.bench.superpoints import bench_superpoints, format_superpoints

    affinity = os.sched_getaffinity(0)
    r = bench_superpoints(tiny_scans / "tiny", preset="tiny", repeats=2)
    assert os.sched_getaffinity(0) == affinity  # pinning to one core is undone
    assert r["vertices"] > 20_000 and r["faces"] > r["vertices"] and "1 thread" in r["threads"]
    for name in ("mesh", "cloud"):
        v = r[name]
        assert len(v["runs"]) == 2 and all(math.isfinite(s) and s > 0 for s in v["runs"])
        assert 10 < v["superpoints"] < r["vertices"] // 20  # ScanNet's minimum segment size is 20
    assert "mesh superpoints" in format_superpoints(r) and "point-cloud superpoints" in format_superpoints(r)


def test_rgsan_train_step_bench_on_tiny_scenes(tmp_path: Path) -> None:
    """`grounding bench rgsan --train`: a real training step on a batch of distinct generated scenes."""
    from datasets.synthetic import generate_synthetic
    from grounding.bench.all import _parse, labels, measure
    from grounding.bench.rgsan import _distinct_scenes_first, bench_rgsan, bench_rgsan_train

    assert _distinct_scenes_first(["a", "a", "b"], 4) == [0, 2, 1, 0]
    generate_synthetic(tmp_path, preset="tiny", seed=0)
    r = bench_rgsan_train("cpu", repeats=2, items=2, descriptions=2, work_dir=tmp_path)
    assert r["items"] == r["scenes"] == 2 and 2 <= r["descriptions"] <= 4
    assert len(r["runs"]) == 2 and all(t > 0 for t in r["runs"])
    assert r["seconds_per_step"] == statistics.median(r["runs"])
    with pytest.raises(ValueError, match="precision"):
        bench_rgsan_train("cpu", precision="16")
    with pytest.raises(ValueError, match="precision"):
        bench_rgsan("cpu", precision="bf16-mixed")
    args = _parse(["rgsan", "--train", "--items", "2", "--device", "cpu", "--precision", "32"])
    assert labels(args) == ["RG-SAN train step, cpu 32, 2 items"] and args.descriptions is None
    m = measure(_parse(["rgsan", "--train", "--items", "1", "--descriptions", "2", "--repeats", "1", "--device",
                        "cpu", "--work-dir", str(tmp_path)]))
    assert len(m.figures) == 1 and "/step (1 items of 1 scenes" in m.figures[0]
