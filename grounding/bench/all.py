"""``grounding bench all``: every benchmark, one row per figure in the table of docs/benchmarks.md.

Each benchmark is one :class:`Job`: the argument list of its equivalent single command (``grounding bench
prepare --preset scannet --repeats 3``, ...), parsed by the CLI's own parser and measured by :func:`measure`, the
function the single commands use too, so a row's command reproduces its figure.

Every job runs in a fresh process forked from a ``forkserver`` (not in this process, and not spawned from it):

- peak-memory figures (``prepare``'s and CPU ``rgsan``'s peak RSS) are process-wide maxima, so in one process
  every benchmark would inherit the peak of the ones before it (the ViT-B encoder alone reaches GBs); and on
  Linux a child spawned (fork/vfork + exec) from a big parent inherits the parent's peak too (``ru_maxrss``
  survives exec), while a child forked from the small forkserver starts from its own;
- the one-core superpoint timing must set the OpenMP/BLAS thread counts before NumPy and Open3D are loaded.

``isolate=False`` (``--in-process``) runs the jobs in this process instead: quicker to start and easy to debug,
with the peak-memory caveat above. The table itself is handled by :mod:`grounding.bench.table`.
"""

from __future__ import annotations

import argparse
import shlex
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Job", "Measurement", "labels", "measure", "plan", "run_all", "run_job", "select"]

QUICK = "quick: "  # prefix of every figure of a --quick run: tiny settings, never the real numbers
BACKBONE_SETTINGS = (("tome", 0.5), ("tome", 0.25), ("prune", 0.5), ("pool", 0.5))


@dataclass(frozen=True)
class Job:
    """One benchmark run: ``grounding bench <argv>``; ``generate`` = (work dir, preset) generated first if missing."""

    name: str
    argv: tuple[str, ...]
    generate: tuple[str, str] | None = None

    @property
    def kind(self) -> str:
        return self.argv[0]

    @property
    def command(self) -> str:
        return "grounding bench " + shlex.join(self.argv)


@dataclass
class Measurement:
    """A benchmark's full report (as its single command prints it) and its short figures, one per label."""

    text: str
    figures: list[str]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    from grounding.cli.main import build_parser

    return build_parser().parse_args(["bench", *argv])


def plan(quick: bool = False, cuda: bool = False, work_dir: Path | None = None) -> list[Job]:
    """Every benchmark, in table order; CUDA variants only when ``cuda``.

    ``quick``: tiny presets, the ``tiny`` encoder at 256 px, 4 descriptions and one repeat: a smoke check that
    every benchmark runs, in about a minute, whose figures mean nothing.
    """
    preset = "tiny" if quick else "scannet"

    def wd(p: str) -> tuple[str, ...]:
        return () if work_dir is None else ("--work-dir", str(Path(work_dir) / p))

    jobs = [Job("prepare", ("prepare", "--preset", preset, "--repeats", "1" if quick else "3", *wd(preset))),
            Job("superpoints", ("superpoints", "--preset", preset, "--repeats", "1" if quick else "5", *wd(preset)))]
    rgsan_dir = str(Path(work_dir) / "tiny" if work_dir else Path(tempfile.gettempdir()) / "grounding_bench_tiny_0")
    # rgsan reads the scannet preset by default; --quick points it at a generated tiny preset instead
    rgsan = (("--descriptions", "4", "--repeats", "1", "--work-dir", rgsan_dir) if quick
             else ("--repeats", "3", *wd("scannet")))
    generate = (rgsan_dir, "tiny") if quick else None
    devices = ["cpu", "cuda"] if cuda else ["cpu"]
    for dev in devices:
        for precision in ("32", "16-mixed") if dev == "cuda" else ("32",):
            name = "rgsan-cpu" if dev == "cpu" else f"rgsan-cuda-{precision}"
            jobs.append(Job(name, ("rgsan", "--device", dev, "--precision", precision, *rgsan), generate))
            if dev == "cuda":  # training throughput: what the trainer's precision choice is about
                size = ("--items", "2", "--descriptions", "4") if quick else ("--items", "8", "--descriptions", "16")
                where = ("--repeats", "1", "--work-dir", rgsan_dir) if quick else ("--repeats", "5", *wd("scannet"))
                train = ("rgsan", "--train", *size, "--device", dev, "--precision", precision, *where)
                jobs.append(Job(f"rgsan-train-cuda-{precision}", train, generate))
    model = ("--model", "tiny", "--image-size", "256") if quick else ("--image-size", "1024")
    for dev in devices:
        for compress, ratio in BACKBONE_SETTINGS:
            argv = ("backbone", *model, "--compress", compress, "--ratio", str(ratio), "--start-block", "2",
                    "--repeats", "1" if quick else "3", *(("--device", "cuda") if dev == "cuda" else ()))
            jobs.append(Job(f"backbone-{compress}-{ratio}" + ("-cuda" if dev == "cuda" else ""), argv))
            if dev == "cuda":  # the spec's GPU protocol: bf16 autocast, 20 warm-up, 100 timed, CUDA events
                bf16 = (*argv[:argv.index("--repeats")], "--repeats", "1" if quick else "100", "--warmup",
                        "1" if quick else "20", "--dtype", "bfloat16", "--device", "cuda")
                jobs.append(Job(f"backbone-{compress}-{ratio}-cuda-bf16", bf16))
    return jobs


def select(jobs: Sequence[Job], only: str | None) -> list[Job]:
    """The jobs named in ``only`` (comma-separated job names or kinds: ``prepare,rgsan-cpu``); all when None."""
    if not only:
        return list(jobs)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {j.name for j in jobs} | {j.kind for j in jobs}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--only: unknown or not available here: {', '.join(unknown)}; "
                         f"choose from {', '.join(sorted(known))}")
    return [j for j in jobs if j.name in names or j.kind in names]


def labels(args: argparse.Namespace) -> list[str]:
    """The ``benchmark`` cells of a parsed ``grounding bench`` command, one per figure of :func:`measure`."""
    if args.bench == "prepare":
        return [f"prepare, {args.preset} preset"]
    if args.bench == "superpoints":
        return [f"superpoints, mesh ({args.preset} scan)", f"superpoints, point cloud ({args.preset} scan)"]
    if args.bench == "rgsan":
        if args.train:
            return [f"RG-SAN train step, {_device(args.device)} {args.precision}, {args.items} items"]
        return [f"RG-SAN forward, {_device(args.device)} {args.precision}"]
    if args.bench == "backbone":
        dtype = "" if args.dtype == "float32" else f" {args.dtype}"
        return [f"SAM {args.model} encoder {args.image_size} px, {args.compress} {args.ratio}, {args.device}{dtype}"]
    raise ValueError(f"no benchmark {args.bench!r}")


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 1 else f"{1e3 * seconds:.1f} ms"


def measure(args: argparse.Namespace) -> Measurement:
    """Run the benchmark of a parsed ``grounding bench WHAT`` command; its report and short figures."""
    if args.bench == "prepare":
        from grounding.bench.prepare import bench_prepare, format_prepare

        r = bench_prepare(args.work_dir, preset=args.preset, seed=args.seed, repeats=args.repeats)
        return Measurement(format_prepare(r), [
            f"{r['median_seconds']:.3f} s/scene median, max {r['max_seconds']:.3f} s ({r['scenes']} scenes, "
            f"median {r['median_points'] / 1e3:.0f}k points); peak RSS {r['peak_rss_mib']:.0f} MiB"])
    if args.bench == "superpoints":
        from grounding.bench.superpoints import single_thread_env

        single_thread_env()  # before NumPy and Open3D load their thread pools (in a fresh process)
        from grounding.bench.superpoints import bench_superpoints, format_superpoints

        r = bench_superpoints(args.work_dir, preset=args.preset, seed=args.seed, repeats=args.repeats,
                              min_vertices=args.min_vertices)
        size = f"{r['vertices'] / 1e3:.0f}k vertices"
        return Measurement(format_superpoints(r), [
            f"{_s(r['mesh']['median'])} median of {r['repeats']} ({size}, {r['faces'] / 1e3:.0f}k faces), one core",
            f"{_s(r['cloud']['median'])} median of {r['repeats']} ({size} as points, normals estimated), one core"])
    if args.bench == "rgsan" and args.train:
        from grounding.bench.rgsan import bench_rgsan_train, format_rgsan_train

        r = bench_rgsan_train(_device(args.device), repeats=args.repeats, items=args.items,
                              descriptions=args.descriptions or 16, work_dir=args.work_dir,
                              overrides=args.overrides, precision=args.precision)
        return Measurement(format_rgsan_train(r), [
            f"{_s(r['seconds_per_step'])}/step ({r['items']} items of {r['scenes']} scenes, {r['descriptions']} "
            f"descriptions, {r['points'] / 1e3:.0f}k points, median of {r['repeats']}); peak {r['peak_mib']:.0f} MiB"])
    if args.bench == "rgsan":
        from grounding.bench.rgsan import bench_rgsan, format_rgsan

        r = bench_rgsan(_device(args.device), repeats=args.repeats, descriptions=args.descriptions or 64,
                        work_dir=args.work_dir, overrides=args.overrides, precision=args.precision)
        return Measurement(format_rgsan(r), [
            f"{_s(r['seconds_per_scene'])}/scene, {1e3 * r['seconds_per_description']:.1f} ms/description "
            f"({r['points'] / 1e3:.0f}k points, {r['descriptions']} descriptions, median of {r['repeats']}); "
            f"peak {r['peak_mib']:.0f} MiB"])
    if args.bench == "backbone":
        from grounding.bench.backbone import bench_backbone, format_backbone

        r = bench_backbone(args.image_size, args.compress, args.ratio, args.start_block, args.model, args.repeats,
                           args.mode, args.scope, args.data_root, device=args.device, dtype=args.dtype,
                           warmup=args.warmup)
        lat, g = r["latency"], 1e9
        tail = f" (p90 {_s(r['p90']['dense'])} → {_s(r['p90']['compressed'])})" if r["repeats"] >= 10 else ""
        return Measurement(format_backbone(r), [
            f"{_s(lat['dense'])} → {_s(lat['compressed'])} median of {r['repeats']}{tail}, {r['speedup']:.2f}x "
            f"(ideal {r['ideal']:.2f}x, {r['flops_dense']['total'] / g:.4g} → "
            f"{r['flops_compressed']['total'] / g:.4g} GFLOPs)"])
    raise ValueError(f"no benchmark {args.bench!r}")


def _measure_job(job: Job) -> Measurement:
    if job.generate is not None:
        work_dir, preset = job.generate
        if not (Path(work_dir) / "ScanRefer_filtered_val.json").is_file():
            from datasets.synthetic import generate_synthetic

            generate_synthetic(Path(work_dir), preset=preset, seed=0)
    return measure(_parse(job.argv))


def _child(job: Job, conn: Any) -> None:
    """Forkserver child: measure and send ``("ok", Measurement)`` or ``("error", traceback)``."""
    try:
        conn.send(("ok", _measure_job(job)))
    except BaseException:  # noqa: B036 - anything, KeyboardInterrupt included, is reported to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_job(job: Job, isolate: bool = True) -> tuple[Measurement | None, str | None]:
    """(measurement, None) or (None, error text) of one job, in a fresh process when ``isolate``."""
    if not isolate:
        try:
            return _measure_job(job), None
        except Exception:
            return None, traceback.format_exc()
    import multiprocessing as mp

    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, send), name=f"bench-{job.name}")
    proc.start()
    send.close()
    try:
        status, payload = recv.recv()
    except EOFError:  # killed (out of memory, a signal) before it could report
        proc.join()
        return None, f"the benchmark process died with exit code {proc.exitcode}"
    finally:
        recv.close()
    proc.join()
    return (payload, None) if status == "ok" else (None, payload)


def run_all(jobs: Sequence[Job], doc: Path | None, quick: bool = False, isolate: bool = True,
            replace_all: bool = True, out: Callable[[str], None] = print) -> int:
    """Run ``jobs`` in order, print each report as it comes, then write the table block of ``doc``.

    Args:
        doc: the Markdown file whose block is rewritten (created when missing); None writes nothing.
        quick: marks every figure with ``quick: ``.
        replace_all: replace all of this machine's rows (a full run) rather than only those of ``jobs``.

    Returns:
        0, or 1 when any benchmark failed (its rows then say FAILED; the others are written all the same).
    """
    from datetime import date

    from grounding.bench import git_revision, header, machine_description
    from grounding.bench.table import Row, merge_rows, parse_block, render_block, rewrite_doc, write_atomic

    machine, today, revision = machine_description(), date.today().isoformat(), git_revision()
    if doc is not None and doc.is_file():
        parse_block(doc.read_text(encoding="utf-8"))  # a broken table fails now, not after the benchmarks
    out(f"bench all: {len(jobs)} benchmarks on {machine}; "
        + (f"the table goes to {doc}" if doc is not None else "nothing is written"))
    rows: list[Row] = []
    failed = []
    for k, job in enumerate(jobs, 1):
        names = labels(_parse(job.argv))
        out(f"\n[{k}/{len(jobs)}] {job.name}: {job.command}")
        t0 = time.perf_counter()
        m, error = run_job(job, isolate)
        if m is not None and len(m.figures) != len(names):
            m, error = None, f"{len(m.figures)} figures for {len(names)} labels"
        if m is None:
            failed.append(job.name)
            out(f"[{k}/{len(jobs)}] {job.name} FAILED after {time.perf_counter() - t0:.0f} s:\n{error.rstrip()}")
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            figures = [f"FAILED: {last[:160]}"] * len(names)
        else:
            out(header(job.command) + "\n" + m.text)
            out(f"[{k}/{len(jobs)}] {job.name}: done in {time.perf_counter() - t0:.0f} s")
            figures = [QUICK + f if quick else f for f in m.figures]
        rows += [Row(n, f, job.command, machine, today, revision) for n, f in zip(names, figures, strict=True)]
    out("\n" + render_block(rows))
    if doc is not None:
        text = doc.read_text(encoding="utf-8") if doc.is_file() else "# Benchmarks\n"
        old = parse_block(text)
        merged = merge_rows(old, rows, machine, None if replace_all else {r.benchmark for r in rows})
        write_atomic(doc, rewrite_doc(text, merged))
        kept = sum(r.machine != machine for r in merged)
        out(f"wrote {len(rows)} rows to {doc} ({kept} rows of other machines kept)")
    if failed:
        out(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
