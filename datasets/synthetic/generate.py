"""Generate synthetic rooms in ScanNet v2's raw formats with ScanRefer and Multi3DRefer descriptions.

Output layout (``out_dir``)::

    raw/scans/sceneSSSS_00/sceneSSSS_00_vh_clean_2.ply               mesh (xyz, rgb, faces)
    raw/scans/sceneSSSS_00/sceneSSSS_00_vh_clean_2.labels.ply        NYU40 label per vertex (0 = unannotated)
    raw/scans/sceneSSSS_00/sceneSSSS_00_vh_clean_2.0.010000.segs.json
    raw/scans/sceneSSSS_00/sceneSSSS_00.aggregation.json
    raw/scannetv2-labels.combined.tsv     raw category -> NYU40 for every label used
    raw/scannetv2_train.txt, raw/scannetv2_val.txt
    ScanRefer_filtered_{train,val}.json   ScanRefer's fields only
    multi3drefer_{train,val}.json
    programs_scanrefer_{train,val}.json, programs_multi3drefer_{train,val}.json
                                          the meaning (program) and wording choices of every description
    synthetic_stats.json                  the statistics of :class:`SyntheticReport` (no timings)

Scene ids start at scene1000_00, outside real ScanNet's 0000-0806, so generated and real scenes never
collide. Every scene has its own random stream derived from (seed, scene index), so the output is
byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from datasets.scannet.labels import scanrefer_raw2label, write_label_tsv
from datasets.scannet.raw import scan_files, write_aggregation, write_labels, write_mesh, write_segs
from datasets.synthetic.catalog import label_rows
from datasets.synthetic.describe import scanrefer_descriptions, scanrefer_record, scene_facts
from datasets.synthetic.geometry import scene_geometry
from datasets.synthetic.multi import multi3drefer_descriptions, multi3drefer_record
from datasets.synthetic.room import sample_room
from datasets.synthetic.scene import build_scene, label_colors

Range = tuple[float, float]
FIRST_SCENE = 1000


@dataclass(frozen=True)
class Preset:
    """Sizes of a generated set.

    Attributes:
        spacing / structure_spacing: vertex spacing of objects / of floor and walls (m).
        width, depth, height: room size ranges (m).
        descriptions: ScanRefer descriptions per object (range; two fewer, at least one, for an object
            alone in its class).
        multi_per_object: Multi3DRefer descriptions per described object.
    """

    name: str
    n_train: int
    n_val: int
    spacing: float
    structure_spacing: float
    width: Range
    depth: Range
    height: Range
    descriptions: tuple[int, int]
    multi_per_object: float


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 4, 2, 0.05, 0.05, (3.1, 3.7), (2.8, 3.3), (2.2, 2.3), (2, 3), 1.0),
    "demo": Preset("demo", 60, 20, 0.048, 0.05, (3.5, 4.8), (3.1, 4.2), (2.3, 2.4), (3, 4), 1.5),
    "scannet": Preset("scannet", 6, 2, 0.025, 0.03, (6.0, 8.0), (5.0, 6.5), (2.6, 2.9), (4, 5), 1.5),
}


@dataclass
class SyntheticReport:
    """What was generated, with the statistics that docs/synthetic3d.md quotes.

    ``seconds_per_scene`` is wall time per scene (in the worker that made it), ``write_seconds_per_scene``
    the part of it spent in the raw writers; neither is written to disk (timings are not deterministic).
    """

    out_dir: str
    preset: str
    seed: int
    scenes: dict[str, list[str]]
    points: list[int]
    segments: list[int]
    segments_per_object: dict[str, float]
    scanrefer: dict[str, int]
    multiple_fraction: float
    same_class_fraction: float
    relation_mix: dict[str, int]
    needed_mix: dict[str, int]
    multi3drefer: dict[str, int]
    classes: dict[str, int]
    color_mismatches: int
    things: int = 0
    described: int = 0
    seconds_per_scene: list[float] = field(default_factory=list)
    write_seconds_per_scene: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal."""
        n = {k: len(v) for k, v in self.scenes.items()}
        pts = sorted(self.points)
        return (f"synthetic {self.preset} (seed {self.seed}): {n.get('train', 0)} train + {n.get('val', 0)} val scenes "
                f"in {self.out_dir}\n"
                f"points per scene: median {pts[len(pts) // 2]}, min {pts[0]}, max {pts[-1]}; "
                f"segments per object: median {self.segments_per_object.get('median', 0):g}\n"
                f"ScanRefer descriptions: {self.scanrefer} ({100 * self.multiple_fraction:.1f}% multiple); "
                f"Multi3DRefer: {self.multi3drefer}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")  # the files must not depend on where they were written
        d.pop("seconds_per_scene")
        d.pop("write_seconds_per_scene")
        return d


def _scene_job(args: tuple[str, str, int, int, Preset]) -> dict[str, Any]:
    """Make, write and describe one scene; returns its records and statistics (runs in a worker)."""
    out, scene_id, seed, index, preset = args
    start = time.perf_counter()
    rng = np.random.default_rng([seed, index])
    room = sample_room(rng, preset.width, preset.depth, preset.height, preset.spacing)
    arr = build_scene(room, rng, preset.spacing, preset.structure_spacing)
    files = scan_files(Path(out) / "raw" / "scans" / scene_id)
    start_write = time.perf_counter()
    write_mesh(files["mesh"], arr.mesh)
    write_labels(files["labels"], arr.mesh, arr.nyu40, label_colors(arr.nyu40))
    write_segs(files["segs"], scene_id, arr.seg)
    write_aggregation(files["aggregation"], scene_id, arr.groups)
    seconds_write = time.perf_counter() - start_write
    geom = scene_geometry(scene_id, arr.mesh.xyz, arr.mesh.rgb, arr.seg, arr.groups)
    sf = scene_facts(geom)
    lo, hi = preset.descriptions
    counts = {}
    for i, t in enumerate(geom.things):
        k = int(rng.integers(lo, hi + 1))
        counts[i] = k if len(sf.members(t.label)) > 1 else max(1, k - 2)
    descs = scanrefer_descriptions(sf, counts, rng)
    per_object: dict[int, int] = {}
    records, programs = [], []
    for d in descs:
        ann = per_object.get(d.object_ids[0], 0)
        per_object[d.object_ids[0]] = ann + 1
        records.append(scanrefer_record(scene_id, d, ann))
        programs.append({"scene_id": scene_id, "object_id": d.object_ids[0], "ann_id": ann, "program": d.program,
                         "choices": d.choices, "kinds": d.kinds, "needed": d.needed})
    order = rng.permutation(len(records))  # real files are not sorted within a scene either
    multi = multi3drefer_descriptions(sf, int(round(preset.multi_per_object * len(per_object))), rng)
    m_records, m_programs = [], []
    for ann, (eval_type, d) in enumerate(multi):
        m_records.append(multi3drefer_record(scene_id, eval_type, d, ann))
        m_programs.append({"scene_id": scene_id, "ann_id": ann, "program": d.program, "choices": d.choices})
    mismatches = sum(1 for t in geom.things if arr.colors.get(t.object_id) != t.color)
    return {
        "scene_id": scene_id, "kind": room.kind, "points": len(arr.mesh.xyz), "segments": len(np.unique(arr.seg)),
        "segments_per_object": [len(g.segments) for g in arr.groups if g.label not in ("wall", "floor")],
        "labels": [t.label for t in geom.things], "records": [records[i] for i in order],
        "programs": [programs[i] for i in order], "multi": m_records, "multi_programs": m_programs,
        "color_mismatches": mismatches, "seconds": time.perf_counter() - start, "seconds_write": seconds_write,
        "things": len(geom.things), "described": len(per_object),
    }


def multiple_flags(records: list[dict[str, Any]], raw2label: dict[str, int]) -> list[bool]:
    """ScanRefer's unique/multiple rule (spec §5): True = multiple, per record."""
    classes: dict[str, dict[str, int]] = {}
    for r in records:
        name = r["object_name"].replace("_", " ")
        classes.setdefault(r["scene_id"], {}).setdefault(r["object_id"], raw2label.get(name, 17))
    out = []
    for r in records:
        scene = classes[r["scene_id"]]
        cls = scene[r["object_id"]]
        out.append(sum(1 for c in scene.values() if c == cls) > 1)
    return out


def _remove_stale_scenes(scans: Path, keep: set[str]) -> None:
    """Delete generated scene folders (ids >= FIRST_SCENE) of an earlier, larger run in the same folder.

    Real ScanNet ids (0000-0806) are never touched.
    """
    for folder in sorted(scans.iterdir()):
        name = folder.name
        if (folder.is_dir() and name not in keep and len(name) == 12 and name.startswith("scene")
                and name[5:9].isdigit() and int(name[5:9]) >= FIRST_SCENE and name.endswith("_00")):
            shutil.rmtree(folder)


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def generate_synthetic(out_dir: str | Path, preset: str | Preset = "demo", seed: int = 0, progress: bool = True,
                       workers: int = 1) -> SyntheticReport:
    """Generate a synthetic ScanNet + ScanRefer + Multi3DRefer set (layout in the module docstring).

    Args:
        out_dir: output folder (created; existing generated files are overwritten).
        preset: "tiny" (tests), "demo" (about 60 train / 20 val scenes of 20k-40k points), "scannet"
            (ScanNet-sized scenes of 150k+ points for benchmarks), or a :class:`Preset`.
        seed: the same seed gives byte-identical files.
        progress: show a tqdm bar over scenes.
        workers: processes generating scenes in parallel (1 = in this process). They are started with
            "spawn", so a script calling this with workers > 1 needs the ``if __name__ == "__main__":`` guard.
    """
    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = Path(out_dir)
    (out / "raw" / "scans").mkdir(parents=True, exist_ok=True)
    splits = {"train": [f"scene{FIRST_SCENE + i:04d}_00" for i in range(p.n_train)],
              "val": [f"scene{FIRST_SCENE + p.n_train + i:04d}_00" for i in range(p.n_val)]}
    jobs = [(str(out), sid, seed, FIRST_SCENE + i, p) for i, sid in enumerate(splits["train"] + splits["val"])]
    _remove_stale_scenes(out / "raw" / "scans", set(splits["train"] + splits["val"]))
    bar = tqdm(total=len(jobs), desc=f"synthetic {p.name} scenes", disable=not progress, unit="scene")
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_scene_job(job))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for res in pool.map(_scene_job, jobs):
                results.append(res)
                bar.update()
    bar.close()
    rows = label_rows()
    write_label_tsv(out / "raw" / "scannetv2-labels.combined.tsv", rows)
    raw2label = scanrefer_raw2label({r.raw_category: r for r in rows})
    by_id = {r["scene_id"]: r for r in results}
    all_records: list[dict[str, Any]] = []
    all_programs: list[dict[str, Any]] = []
    for split, ids in splits.items():
        (out / "raw" / f"scannetv2_{split}.txt").write_text("".join(f"{s}\n" for s in ids))
        records = [rec for s in ids for rec in by_id[s]["records"]]
        _dump(out / f"ScanRefer_filtered_{split}.json", records)
        _dump(out / f"programs_scanrefer_{split}.json", [pr for s in ids for pr in by_id[s]["programs"]])
        _dump(out / f"multi3drefer_{split}.json", [rec for s in ids for rec in by_id[s]["multi"]])
        _dump(out / f"programs_multi3drefer_{split}.json", [pr for s in ids for pr in by_id[s]["multi_programs"]])
        all_records += records
        all_programs += [pr for s in ids for pr in by_id[s]["programs"]]
    report = _report(out, p, seed, splits, results, all_records, all_programs, raw2label)
    _dump(out / "synthetic_stats.json", report.to_json())
    return report


def _report(out: Path, p: Preset, seed: int, splits: dict[str, list[str]], results: list[dict[str, Any]],
            records: list[dict[str, Any]], programs: list[dict[str, Any]],
            raw2label: dict[str, int]) -> SyntheticReport:
    multiple = multiple_flags(records, raw2label)
    # multiple because another described object has the same raw category (not only via "others")
    described: dict[str, dict[str, str]] = {}
    for r in records:
        described.setdefault(r["scene_id"], {})[r["object_id"]] = r["object_name"]
    same = [sum(1 for n in described[r["scene_id"]].values() if n == r["object_name"]) > 1 for r in records]
    mix: dict[str, int] = {}
    needed: dict[str, int] = {}
    for pr in programs:
        for k in pr["kinds"]:
            mix[k] = mix.get(k, 0) + 1
        for k in pr["needed"]:
            needed[k] = needed.get(k, 0) + 1
    eval_types: dict[str, int] = {}
    for res in results:
        for rec in res["multi"]:
            eval_types[rec["eval_type"]] = eval_types.get(rec["eval_type"], 0) + 1
    classes: dict[str, int] = {}
    for res in results:
        for lab in res["labels"]:
            classes[lab] = classes.get(lab, 0) + 1
    spo = np.concatenate([r["segments_per_object"] for r in results]).astype(np.float64)
    return SyntheticReport(
        out_dir=str(out), preset=p.name, seed=seed, scenes=splits, points=[r["points"] for r in results],
        segments=[r["segments"] for r in results],
        segments_per_object={"min": float(spo.min()), "median": float(np.median(spo)), "mean": float(spo.mean()),
                             "max": float(spo.max())},
        scanrefer={split: sum(1 for r in records if r["scene_id"] in set(ids)) for split, ids in splits.items()},
        multiple_fraction=float(np.mean(multiple)) if multiple else 0.0,
        same_class_fraction=float(np.mean(same)) if same else 0.0,
        relation_mix=dict(sorted(mix.items())), needed_mix=dict(sorted(needed.items())),
        multi3drefer=dict(sorted(eval_types.items())), classes=dict(sorted(classes.items())),
        color_mismatches=sum(r["color_mismatches"] for r in results),
        things=sum(r["things"] for r in results), described=sum(r["described"] for r in results),
        seconds_per_scene=[r["seconds"] for r in results],
        write_seconds_per_scene=[r["seconds_write"] for r in results])
