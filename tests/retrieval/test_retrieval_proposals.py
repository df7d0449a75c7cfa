"""SAM automatic-mask proposals: the record -> box conversion with ChatRex's filters (mocked generator), and a
randomly initialised tiny SAM through ``SamAutomaticMaskGenerator`` end to end into a proposal file that the
candidate source reads (no SAM weights exist here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.candidates import ProposalBoxes, read_proposals
from datasets.refboxes import refer_box_dataset
from datasets.synthetic.images import generate_synthetic2d
from datasets.transforms.boxes2d import BoxLetterbox
from grounding.retrieval.proposals import masks_to_proposals, propose_split


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2d_props")
    generate_synthetic2d(out, preset="tiny", seed=0)
    return out


def test_masks_to_proposals_filters() -> None:
    records = [{"bbox": [10, 10, 19, 19], "predicted_iou": 0.9},   # extent 20 x 20
               {"bbox": [10, 10, 19, 20], "predicted_iou": 0.8},   # IoU 0.95 with the first: removed by NMS 0.8
               {"bbox": [40, 0, 30, 9], "predicted_iou": 0.5},     # clipped at the right edge (width 60)
               {"bbox": [0, 0, 5, 5], "predicted_iou": 0.2}]       # below score 0.3
    out = masks_to_proposals(records, height=50, width=60)
    assert out.tolist() == [[10, 10, 20, 20, 0.9], [40, 0, 20, 10, 0.5]]
    assert masks_to_proposals(records, 50, 60, max_boxes=1).shape == (1, 5)
    assert masks_to_proposals([], 50, 60).shape == (0, 5)


class _MockGenerator:
    """Stands in for SamAutomaticMaskGenerator: one mask record per call, the whole image minus a border."""

    def generate(self, image: np.ndarray) -> list[dict]:
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape[2] == 3
        return [{"bbox": [2, 3, w - 5, h - 7], "predicted_iou": 0.95, "stability_score": 0.9}]


def test_mocked_generator_to_candidates(tiny: Path, tmp_path: Path) -> None:
    path = propose_split(_MockGenerator(), tiny, "synthetic2d", "val", tmp_path / "props.json")
    table = read_proposals(path)
    val = refer_box_dataset(tiny, "synthetic2d", "val", BoxLetterbox(64), ProposalBoxes(path))
    assert set(table) == {u[0] for u in val.units}
    item = val[0]
    info = val.images[item["image_id"]]
    assert item["boxes"].tolist() == [[2, 3, info.width - 2, info.height - 3]]   # xyxy of the extent
    assert all(q["target"] == -1 for q in item["queries"])   # a whole-image box matches no object at IoU 0.5


def _tiny_sam():
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2, out_chans=32,
                              window_size=0, global_attn_indexes=(0,))
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                                            num_heads=2),
                          num_multimask_outputs=3, iou_head_hidden_dim=32)
    return Sam(encoder, prompt, decoder).eval()


def test_random_tiny_sam_through_the_automatic_generator(tiny: Path, tmp_path: Path) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    # Random weights give arbitrary masks: keep every one (no quality filters) and check the plumbing only.
    generator = SamAutomaticMaskGenerator(_tiny_sam(), points_per_side=4, points_per_batch=16, pred_iou_thresh=-1e9,
                                          stability_score_thresh=-1e9, box_nms_thresh=1.0)
    path = propose_split(generator, tiny, "synthetic2d", "val", tmp_path / "sam.json", min_score=-1e9, limit=1)
    table = read_proposals(path)
    assert len(table) == 1
    rows = next(iter(table.values()))
    assert rows.shape[1] == 5 and np.isfinite(rows).all()
    assert (rows[:, 2] >= rows[:, 0]).all() and (rows[:, 3] >= rows[:, 1]).all()
    assert (rows[:-1, 4] >= rows[1:, 4]).all()  # best first
