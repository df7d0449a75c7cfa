"""``Predictor2D`` and ``grounding predict --image`` on tiny DIT / box-retrieval runs over generated photos.

Runs are untrained but perturbed (zero-initialised text injection and gate would make every sentence give the same
mask): identical answers, not accuracy, is what is tested. The reference is the engine's validation path: the
run's ``data.val`` dataset, its collate, the model and the run's postprocess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from run_helpers import save_run
from tiny_overrides import TINY

from datasets.synthetic.images import generate_synthetic2d
from grounding.cli.main import main
from grounding.engine.config import load_config
from grounding.export import export_checkpoint
from grounding.predict import Box2D, Mask2D, Predictor2D

# The tiny ViTs of tests/tiny_overrides.py (64 px canvas).
SMALL = {"dit": TINY["dit"], "retrieval": TINY["retrieval"]}


@dataclass
class Run2D:
    cfg: DictConfig
    model: torch.nn.Module
    postprocess: object
    ckpt: Path
    export: Path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2d_predict")
    generate_synthetic2d(out, preset="tiny", seed=0)
    return out


def _make_run(kind: str, photos: Path, run_dir: Path) -> Run2D:
    cfg = load_config("train", [*SMALL[kind], f"data.root={photos}", f"run_dir={run_dir}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model.net)
    with torch.no_grad():  # away from the zero initialisation, so the words change the answer
        for name, p in model.named_parameters():
            if not name.startswith("text_encoder."):
                p.add_(0.05 * torch.randn_like(p))
    if kind == "dit":
        # The threshold sits at the perturbed model's median probability on the first val photo (saved with the
        # run), so its masks cover part of the photo and pixels near the threshold are where an inexact
        # reproduction would show, whatever the modules the recipe adds.
        ds = instantiate(cfg.data.val)
        batch = ds.collate([ds[i] for i in _first_image(ds)[0]])
        with torch.no_grad():
            prob = model.eval()(batch).pred_logits.sigmoid()
        cfg.model.postprocess.threshold = float(prob[batch.valid].median())
    postprocess = instantiate(cfg.model.postprocess)
    ckpt = save_run(cfg, model, postprocess, run_dir)
    return Run2D(cfg, model.eval(), postprocess, ckpt, export_checkpoint(ckpt, run_dir / "export"))


@pytest.fixture(scope="module")
def dit_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Run2D:
    return _make_run("dit", photos, tmp_path_factory.mktemp("dit_run"))


@pytest.fixture(scope="module")
def retrieval_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Run2D:
    return _make_run("retrieval", photos, tmp_path_factory.mktemp("retrieval_run"))


def _first_image(ds) -> tuple[list[int], Path]:
    """Dataset positions of every val sentence about the first val image, and that image's file."""
    image_id = ds.records[0].image_id
    return [i for i, r in enumerate(ds.records) if r.image_id == image_id], Path(ds.records[0].image_file)


def test_dit_export_and_checkpoint_match_the_val_path(dit_run: Run2D) -> None:
    ds = instantiate(dit_run.cfg.data.val)  # the engine's val dataset: refer_image_dataset + val Letterbox
    index, image_file = _first_image(ds)
    batch = ds.collate([ds[i] for i in index])
    with torch.no_grad():
        reference = dit_run.postprocess(dit_run.model(batch), batch)
    texts = [ds.records[i].sentence for i in index]
    with Image.open(image_file) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("RGB"))
    for source in (dit_run.export, dit_run.ckpt):
        predictor = Predictor2D.from_pretrained(source)
        assert predictor.kind == "mask" and predictor.canvas == 64
        masks = predictor(image_file, texts)
        assert [m.text for m in masks] == texts and all(isinstance(m, Mask2D) for m in masks)
        for ref, got in zip(reference, masks):
            assert got.mask.dtype == bool and got.mask.shape == (height, width)
            assert torch.equal(torch.from_numpy(got.mask), ref.mask) and got.score == ref.score
            assert 0 < got.num_pixels < height * width  # neither empty nor full: the comparison means something
    assert any(not np.array_equal(masks[0].mask, m.mask) for m in masks[1:])  # the words change the answer
    from_array = predictor(pixels, texts)  # an (H, W, 3) uint8 array is the same photo
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(from_array, masks))
    with pytest.raises(ValueError, match="box-retrieval"):
        predictor(image_file, texts[:1], boxes=[[0, 0, 10, 10]])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(pixels.astype(np.float32), texts[:1])


def test_retrieval_with_user_boxes(retrieval_run: Run2D) -> None:
    ds = instantiate(retrieval_run.cfg.data.val)  # refer_box_dataset + val BoxLetterbox, annotated candidates
    item = ds[0]
    batch = ds.collate([item])
    with torch.no_grad():
        reference = [p for p in retrieval_run.postprocess(retrieval_run.model(batch), batch) if hasattr(p, "index")]
    texts = [q["text"] for q in item["queries"] if q["expression"]]
    boxes = np.asarray(item["boxes"], np.float64)  # the val item's (shuffled) candidates, xyxy pixels
    image_file = Path(ds.records[ds.units[0][1][0][0]].image_file)
    predictor = Predictor2D.from_pretrained(retrieval_run.export)
    assert predictor.kind == "box"
    answers = predictor(image_file, texts, boxes=boxes)
    assert len(answers) == len(texts) == len(reference)
    for ref, got in zip(reference, answers):
        assert isinstance(got, Box2D) and 0 <= got.index < len(boxes)
        assert np.array_equal(got.box, boxes[got.index]) and 0.0 <= got.score <= 1.0 and 0.0 <= got.prob <= 1.0
        assert got.index == ref.index and got.score == pytest.approx(ref.score, abs=1e-5)
    with pytest.raises(ValueError, match="candidate boxes"):
        predictor(image_file, texts)
    with pytest.raises(ValueError, match="x1 > x0"):
        predictor(image_file, texts, boxes=[[10, 10, 5, 20]])


class _FakeSam:
    """SAM's automatic-mask-generator interface: ``generate(rgb) -> records`` (bbox XYWH inclusive bounds)."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, rgb: np.ndarray) -> list[dict]:
        self.calls += 1
        h, w = rgb.shape[:2]
        return [{"bbox": [2, 3, w // 3, h // 3], "predicted_iou": 0.95},
                {"bbox": [w // 2, h // 2, w // 3, h // 4], "predicted_iou": 0.9},
                {"bbox": [0, 0, 4, 4], "predicted_iou": 0.1}]  # below ChatRex's 0.3: dropped


def test_retrieval_candidates_from_a_mask_generator(retrieval_run: Run2D, photos: Path) -> None:
    image_file = sorted((photos / "images" / "train2014").glob("*.jpg"))[0]
    fake = _FakeSam()
    predictor = Predictor2D.from_pretrained(retrieval_run.ckpt, mask_generator=fake)
    image = predictor.load(image_file)
    cands = predictor.candidates(image)
    assert len(cands) == 2 and fake.calls == 1
    answers = predictor(image, ["the red circle", "the small square"])
    assert fake.calls == 2 and all(any(np.array_equal(a.box, b) for b in cands.boxes) for a in answers)


def test_cli_writes_masks_and_boxes(dit_run: Run2D, retrieval_run: Run2D, photos: Path, tmp_path: Path,
                                    capsys) -> None:
    image_file = sorted((photos / "images" / "train2014").glob("*.jpg"))[0]
    texts = ["the red circle", "the blue square on the left"]
    out = tmp_path / "masks"
    assert main(["predict", "--model", str(dit_run.export), "--image", str(image_file), *texts, "--out",
                 str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    expected = Predictor2D.from_pretrained(dit_run.export)(image_file, texts)
    with Image.open(image_file) as im:
        size = im.size
    for i, (entry, m) in enumerate(zip(summary["predictions"], expected)):
        assert entry["mask"].startswith(f"{i:02d}_") and (out / entry["overlay"]).is_file()
        with Image.open(out / entry["mask"]) as png:
            assert png.size == size
            assert np.array_equal(np.asarray(png) > 127, m.mask) and entry["num_pixels"] == m.num_pixels

    boxes = [[5, 5, 60, 50], [40, 30, 120, 110], [0, 70, 50, 127]]
    (tmp_path / "boxes.json").write_text(json.dumps({"boxes": [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1
                                                               in boxes], "format": "xywh"}))
    out = tmp_path / "boxes"
    assert main(["predict", "--model", str(retrieval_run.export), "--image", str(image_file), *texts,
                 "--boxes", str(tmp_path / "boxes.json"), "--out", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [c["box"] for c in summary["candidates"]] == boxes
    for entry in summary["predictions"]:
        assert entry["box"] == boxes[entry["candidate"]] and 0.0 <= entry["score"] <= 1.0
        assert (out / entry["overlay"]).is_file()
    capsys.readouterr()
    assert main(["predict", "--model", str(retrieval_run.export), "--image", str(image_file), texts[0], "--out",
                 str(tmp_path / "none")]) == 2
    assert "--boxes" in capsys.readouterr().err
