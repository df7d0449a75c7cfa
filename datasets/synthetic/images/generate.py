"""Generate referring-expression images in the RefCOCO layout (spec refcoco-dit §1.2, §1.3).

Output layout (``out``)::

    images/train2014/COCO_train2014_%012d.jpg   JPEG (quality 90), named by image id
    synthetic2d/refs(unc).p                     pickle: list of ref dicts with RefCOCO's fields only
    synthetic2d/instances.json                  COCO: images, annotations (visible-part polygons), categories
    synthetic2d/scenes.json                     what was drawn and meant: per image the objects (class,
                                                colour, size, drawn polygons, centre) in drawing order
                                                and the program of every sentence (see expressions.py)
    synthetic2d/meta.json                       preset, seed, generator version, counts, statistics

Splits are by image, as in RefCOCO (unc). ``train`` and ``val`` refer to objects of both kinds;
``testA`` refers only to geometric shapes and ``testB`` only to object silhouettes, mirroring
RefCOCO's testA (people) / testB (other objects) partition. Test images still show both kinds, so
the other kind appears as distractor or anchor.

Every image has its own random stream, seeded by (seed, image id, attempt), so the output is
byte-identical for a seed. Nothing time-dependent is written.
"""

from __future__ import annotations

import io
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datasets.synthetic.images.contours import HoleError, coco_fields, mask_to_polygons
from datasets.synthetic.images.expressions import (
    ATTRS,
    Fact,
    Resolver,
    candidate_programs,
    choose_program,
    program_key,
    render,
    tokenize,
)
from datasets.synthetic.images.scene import SceneObject, paint, sample_layout
from datasets.synthetic.images.shapes import BY_NAME, coco_categories

GENERATOR_VERSION = "1"
DATASET = "synthetic2d"
SPLITS: tuple[str, ...] = ("train", "val", "testA", "testB")
TARGET_KIND = {"testA": "shape", "testB": "silhouette"}
SENTENCES_PER_REF = ((1, 0.6), (2, 0.28), (3, 0.12))
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Preset2D:
    """Sizes of a generated set: images per split, image width and height ranges (px, inclusive)."""

    name: str
    images: tuple[tuple[str, int], ...]
    width: tuple[int, int]
    height: tuple[int, int]
    objects: tuple[int, int] = (3, 6)
    refs: tuple[int, int] = (1, 3)


PRESETS: dict[str, Preset2D] = {
    "tiny": Preset2D("tiny", (("train", 6), ("val", 2), ("testA", 2), ("testB", 2)), (144, 176), (128, 160)),
    "demo": Preset2D("demo", (("train", 1500), ("val", 100), ("testA", 60), ("testB", 60)), (160, 224),
                     (144, 208)),
}


@dataclass
class Synthetic2DSummary:
    """What was written: counts per split, statistics on how much the words matter, time taken."""

    out: Path
    preset: str
    seed: int
    counts: dict[str, dict[str, int]]
    stats: dict[str, float]
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"synthetic2d ({self.preset}, seed {self.seed}) -> {self.out} in {self.seconds:.1f} s"]
        for split, c in self.counts.items():
            lines.append(f"  {split:6s} images {c['images']:5d}  refs {c['refs']:5d}  sentences {c['sentences']:5d}")
        lines.append("  " + ", ".join(f"{k} {v:.3f}" for k, v in self.stats.items()))
        return "\n".join(lines)


def image_file_name(image_id: int) -> str:
    """COCO train2014 file name of an image id."""
    return f"COCO_train2014_{image_id:012d}.jpg"


def _facts(objects: list[SceneObject]) -> list[Fact]:
    return [Fact(o.cls, o.color, o.size, o.center[0], o.center[1]) for o in objects]


def _make_image(seed: int, image_id: int, split: str, preset: Preset2D) -> dict[str, Any]:
    """Layout, expressions, polygons and JPEG bytes of one image (retrying until it has a ref)."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, image_id, attempt])
        width = int(rng.integers(preset.width[0], preset.width[1] + 1))
        height = int(rng.integers(preset.height[0], preset.height[1] + 1))
        n_obj = int(rng.integers(preset.objects[0], preset.objects[1] + 1))
        objects = sample_layout(rng, width, height, n_obj, TARGET_KIND.get(split))
        if len(objects) < preset.objects[0]:
            continue
        try:
            polygons = [mask_to_polygons(o.visible) for o in objects]
        except HoleError:
            continue
        facts = _facts(objects)
        res = Resolver(facts, width, height)
        eligible = [i for i, o in enumerate(objects) if split not in TARGET_KIND or o.kind == TARGET_KIND[split]]
        order = [eligible[int(k)] for k in rng.permutation(len(eligible))]
        want = int(rng.integers(preset.refs[0], preset.refs[1] + 1))
        refs = []
        for t in order:
            if len(refs) == want:
                break
            options = candidate_programs(t, res)
            n_sent = int(rng.choice([n for n, _ in SENTENCES_PER_REF], p=[p for _, p in SENTENCES_PER_REF]))
            used: set[tuple[Any, ...]] = set()
            sents = []
            for _ in range(n_sent):
                program = choose_program(rng, options, used)
                if program is None:
                    break
                used.add(program_key(program))
                sents.append((program, render(rng, program)))
            if sents:
                refs.append((t, sents))
        if not refs:
            continue
        buf = io.BytesIO()
        Image.fromarray(paint(rng, objects, width, height)).save(buf, format="JPEG", quality=JPEG_QUALITY)
        return {"width": width, "height": height, "objects": objects, "polygons": polygons, "facts": facts,
                "refs": sorted(refs, key=lambda r: r[0]), "jpeg": buf.getvalue()}
    raise RuntimeError(f"synthetic2d: image {image_id} ({split}) found no layout with a describable object")


def _stats(per_sentence: list[tuple[int, list[Fact]]]) -> dict[str, float]:
    """How much the words matter, over all sentences (target index, facts of its image)."""
    if not per_sentence:
        return {}
    chance, distractor, single = [], [], []
    for t, facts in per_sentence:
        f = facts[t]
        others = [g for i, g in enumerate(facts) if i != t]
        chance.append(1.0 / len(facts))
        distractor.append(any(g.cls == f.cls or g.color == f.color for g in others))
        single.append(all(any(getattr(g, a) == getattr(f, a) for g in others) for a in ATTRS))
    return {"chance_text_free": float(np.mean(chance)), "with_distractor": float(np.mean(distractor)),
            "no_single_attribute": float(np.mean(single))}


def generate_synthetic2d(out: str | Path, preset: str = "demo", seed: int = 0) -> Synthetic2DSummary:
    """Write a generated RefCOCO-format set to ``out`` (layout in the module docstring).

    Args:
        out: output folder; ``images/train2014/`` and ``synthetic2d/`` are created in it.
        preset: a key of ``PRESETS`` (``tiny`` for tests, ``demo`` for a CPU training run).
        seed: the same seed gives byte-identical files.

    Returns:
        the summary (counts per split, statistics, seconds).
    """
    if preset not in PRESETS:
        raise ValueError(f"synthetic2d: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    t0 = time.perf_counter()
    cfg = PRESETS[preset]
    out = Path(out)
    img_dir, ann_dir = out / "images" / "train2014", out / DATASET
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    images, annotations, refs, scenes = [], [], [], []
    counts = {s: {"images": 0, "refs": 0, "sentences": 0} for s in SPLITS}
    kinds: dict[str, int] = {}
    per_sentence: list[tuple[int, list[Fact]]] = []
    image_id, ref_id, sent_id = 0, 0, 0
    for split, n_images in cfg.images:
        for _ in range(n_images):
            image_id += 1
            rec = _make_image(seed, image_id, split, cfg)
            (img_dir / image_file_name(image_id)).write_bytes(rec["jpeg"])
            h, w = rec["height"], rec["width"]
            images.append({"id": image_id, "file_name": image_file_name(image_id), "height": h, "width": w})
            scene_objects, scene_sents = [], []
            for k, (obj, polys) in enumerate(zip(rec["objects"], rec["polygons"])):
                ann_id = image_id * 10 + k  # at most 6 objects per image, so ids never collide
                bbox, area = coco_fields(polys, h, w)
                annotations.append({"id": ann_id, "image_id": image_id, "category_id": BY_NAME[obj.cls].id,
                                    "bbox": bbox, "segmentation": polys, "area": area, "iscrowd": 0})
                scene_objects.append({"ann_id": ann_id, "category": obj.cls, "kind": obj.kind, "color": obj.color,
                                      "size": obj.size, "center": [round(c, 3) for c in obj.center],
                                      "extent": round(obj.extent, 3),
                                      "polygons": [p.reshape(-1).tolist() for p in obj.polygons]})
            for t, sents in rec["refs"]:
                ann_id = image_id * 10 + t
                sentences, sent_ids = [], []
                for program, raw in sents:
                    tokens = tokenize(raw)
                    sentences.append({"sent_id": sent_id, "sent": " ".join(tokens), "raw": raw, "tokens": tokens})
                    scene_sents.append({"sent_id": sent_id, "ref_id": ref_id, "ann_id": ann_id, "program": program})
                    sent_ids.append(sent_id)
                    kinds[program["kind"]] = kinds.get(program["kind"], 0) + 1
                    per_sentence.append((t, rec["facts"]))
                    sent_id += 1
                refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
                             "category_id": BY_NAME[rec["objects"][t].cls].id, "split": split,
                             "sent_ids": sent_ids, "sentences": sentences,
                             "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"})
                counts[split]["refs"] += 1
                counts[split]["sentences"] += len(sentences)
                ref_id += 1
            counts[split]["images"] += 1
            scenes.append({"image_id": image_id, "split": split, "width": w, "height": h,
                           "objects": scene_objects, "sentences": scene_sents})

    stats = _stats(per_sentence)
    stats.update({f"kind_{k}": v / max(sent_id, 1) for k, v in sorted(kinds.items())})
    instances = {"info": {"description": "synthetic2d: generated referring-expression images",
                          "version": GENERATOR_VERSION},
                 "images": images, "annotations": annotations, "categories": coco_categories()}
    meta = {"dataset": DATASET, "generator_version": GENERATOR_VERSION, "preset": preset, "seed": seed,
            "counts": counts, "stats": stats, "splits": {"testA": "refs to shapes", "testB": "refs to silhouettes"}}
    with open(ann_dir / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)  # RefCOCO's pickles are Python-2 era; protocol 2 loads everywhere
    _write_json(ann_dir / "instances.json", instances)
    _write_json(ann_dir / "scenes.json", {"dataset": DATASET, "images": scenes})
    _write_json(ann_dir / "meta.json", meta, indent=1)
    return Synthetic2DSummary(out, preset, seed, counts, stats, time.perf_counter() - t0,
                              files=["refs(unc).p", "instances.json", "scenes.json", "meta.json"])


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    seps = (",", ": ") if indent else (",", ":")
    path.write_text(json.dumps(obj, sort_keys=True, indent=indent, separators=seps) + "\n")
