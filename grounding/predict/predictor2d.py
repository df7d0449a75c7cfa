"""``Predictor2D``: a trained DIT (masks) or box-retrieval model (boxes) answering sentences about one photo.

>>> predictor = Predictor2D.from_pretrained("exports/dit")            # or a run's checkpoints/last.ckpt
>>> masks = predictor("photo.jpg", ["the red mug", "the plate"])
>>> masks[0].mask.shape                                                 # (H, W) bool, the photo's own pixels
>>> boxer = Predictor2D.from_pretrained("exports/retrieval")
>>> answers = boxer("photo.jpg", ["the red mug"], boxes=[[10, 20, 110, 90], [200, 40, 260, 120]])
>>> answers[0].index, answers[0].box                                    # the chosen candidate, xyxy pixels

Preprocessing is the run's validation letterbox (:class:`~datasets.transforms.image2d.Letterbox` for DIT,
:class:`~datasets.transforms.boxes2d.BoxLetterbox` for retrieval, at the config's canvas size ``S``): long side
resized to S, SAM normalisation, centre padding. Outputs go back to original pixels with the run's own
postprocess (DIT: canvas logits cropped to the resized image, resized as logits to (H, W), thresholded; retrieval:
the argmax candidate, whose box is already in original pixels). So the answer is what ``grounding eval`` gives for
the same image and sentence, up to the grouping of sentences into batches (``max_texts`` per network pass, the
run's ``data.eval_batch_size``), which can move floating-point results in their last bits.

Candidates of a retrieval model: ``boxes=`` (N, 4) xyxy original pixels, or SAM's automatic masks when a SAM
checkpoint (or any mask generator) was given; neither is an error, as the model can only pick among boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from datasets.candidates import Candidates
from grounding.predict.image import ImageSource, check_boxes, load_image, sam_candidates
from grounding.predict.predictor3d import _load_weights, _resolve_device, build_network, load_network_state

MAX_TEXTS = 32  # sentences per network pass when the config has no data.eval_batch_size
KINDS = ("mask", "box")


@dataclass
class Mask2D:
    """A DIT answer.

    Attributes:
        text: the sentence as given (and as the model read it: the val transform leaves it unchanged).
        mask: (H, W) bool numpy array over the input image's pixels (row, column), origin top-left.
        score: mean foreground probability inside the mask (0 for an empty mask), as ``grounding eval`` records.
    """

    text: str
    mask: np.ndarray
    score: float

    @property
    def num_pixels(self) -> int:
        """Pixels in the mask."""
        return int(self.mask.sum())


@dataclass
class Box2D:
    """A box-retrieval answer.

    Attributes:
        text: the sentence as given.
        box: (4,) float64 xyxy original pixels, exactly the chosen candidate as given (NaN when no box).
        score: sigmoid probability of the chosen candidate, in [0, 1] (0 when no box).
        index: the chosen candidate's position in the candidate list (-1: no box, the "no target" answer won).
        prob: its softmax probability among the candidates.
    """

    text: str
    box: np.ndarray
    score: float
    index: int
    prob: float

    @property
    def no_target(self) -> bool:
        return self.index < 0


def canvas_size(cfg: DictConfig, source: str | Path = "<config>") -> int:
    """S of the run's validation letterbox: ``data.val.transform.size`` (else ``data.source.canvas``)."""
    for key in ("data.val.transform.size", "data.source.canvas"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            return int(value)
    raise ValueError(f"{source}: the config has neither data.val.transform.size nor data.source.canvas, so the "
                     "image size the model was evaluated at is unknown")


def model_kind(model: nn.Module) -> str:
    """``"mask"`` for DIT, ``"box"`` for :class:`~grounding.retrieval.BoxRetriever`."""
    from grounding.retrieval.model import BoxRetriever
    from segmentation.dit import DIT

    if isinstance(model, DIT):
        return "mask"
    if isinstance(model, BoxRetriever):
        return "box"
    raise TypeError(f"Predictor2D serves DIT and BoxRetriever models, got {type(model).__name__} (3D models: "
                    "Predictor3D)")


class Predictor2D:
    """DIT / box-retrieval inference on any photo (see the module docstring).

    Args:
        model: the network (``task.model``); moved to ``device`` and put in eval mode.
        postprocess: the run's postprocess (``DITPostprocess`` or ``RetrievalPostprocess``).
        canvas: S, the side of the validation letterbox (:func:`canvas_size` of the run config).
        device: where the network runs (None: CUDA when available).
        max_texts: sentences per network pass.
        sam_checkpoint: retrieval only: an official SAM checkpoint whose automatic masks give the candidates when
            a call has no ``boxes``; built on first use. sam_model_type: its size (``vit_b``, ``vit_l``, ``vit_h``).
        mask_generator: instead of ``sam_checkpoint``, any object with SAM's ``generate(rgb) -> records``.
    """

    def __init__(self, model: nn.Module, postprocess: Any, canvas: int, device: str | torch.device | None = "cpu",
                 max_texts: int = MAX_TEXTS, sam_checkpoint: str | Path | None = None, sam_model_type: str = "vit_b",
                 mask_generator: Any = None) -> None:
        from datasets.transforms.boxes2d import BoxLetterbox
        from datasets.transforms.image2d import Letterbox

        if max_texts < 1:
            raise ValueError(f"max_texts must be >= 1, got {max_texts}")
        self.kind = model_kind(model)
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.postprocess = postprocess
        self.canvas = int(canvas)
        # train=False: no draws, long side to S, normalise, centre-pad (the datasets' val items)
        self.transform = Letterbox(size=self.canvas) if self.kind == "mask" else BoxLetterbox(size=self.canvas)
        self.max_texts = max_texts
        self.sam_checkpoint, self.sam_model_type = sam_checkpoint, sam_model_type
        self.mask_generator = mask_generator

    @classmethod
    def from_config(cls, cfg: DictConfig, state: dict[str, torch.Tensor] | None = None, exempt: Sequence[str] = (),
                    device: str | torch.device | None = "cpu", source: str | Path = "<config>",
                    **kwargs: Any) -> Predictor2D:
        """Build from a run config; load ``state`` (network keys) when given. ``kwargs`` go to the constructor."""
        model, postprocess = build_network(cfg, source)
        if state is not None:
            load_network_state(model, state, list(exempt), source)
        kwargs.setdefault("max_texts", int(OmegaConf.select(cfg, "data.eval_batch_size", default=None) or MAX_TEXTS))
        return cls(model, postprocess, canvas_size(cfg, source), device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = "cpu",
                        config: str | Path | None = None, **kwargs: Any) -> Predictor2D:
        """Load an export folder (``grounding export``) or a Lightning ``.ckpt`` (read with ``weights_only=True``).

        Args:
            path: export folder, or ``<run_dir>/checkpoints/*.ckpt`` (its config is ``<run_dir>/config.yaml``).
            device: ``"cpu"``, ``"cuda"``, ... or None for CUDA when available.
            config: a run config overriding the one found with the weights.
            kwargs: ``max_texts``, ``sam_checkpoint``, ``sam_model_type``, ``mask_generator`` (see the class).

        Raises:
            UnsafeCheckpointError: a ``.ckpt`` that needs arbitrary unpickling (nothing of it is executed).
        """
        path = Path(path)
        state, cfg, exempt = _load_weights(path, config)
        return cls.from_config(cfg, state, exempt, device=device, source=path, **kwargs)

    # ------------------------------------------------------------------ inputs
    def load(self, image: ImageSource | torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 RGB of any accepted image (a tensor in that layout is used as it is)."""
        if isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
                raise ValueError(f"expected a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
            return image
        return load_image(image)

    def candidates(self, image: torch.Tensor, boxes: Any = None) -> Candidates:
        """The candidate boxes of one image (retrieval): ``boxes`` when given, else SAM's automatic masks.

        Args:
            image: (3, H, W) uint8 RGB (:meth:`load`).
            boxes: (N, 4) xyxy original pixels, a :class:`Candidates`, or None.
        """
        h, w = int(image.shape[1]), int(image.shape[2])
        if isinstance(boxes, Candidates):
            return Candidates(check_boxes(boxes.boxes, h, w), np.asarray(boxes.scores, np.float32))
        if boxes is not None:
            arr = check_boxes(boxes, h, w)
            return Candidates(arr, np.ones(len(arr), np.float32))  # user boxes score 1, like annotated ones
        if self.mask_generator is None and self.sam_checkpoint is None:
            raise ValueError("a box-retrieval model only chooses among candidate boxes, and none were given: pass "
                             "boxes=(N, 4) xyxy pixels (CLI: --boxes boxes.json) or a SAM checkpoint for automatic "
                             "proposals (sam_checkpoint=..., CLI: --sam-checkpoint sam_vit_b_01ec64.pth)")
        if self.mask_generator is None:
            from grounding.retrieval.proposals import build_sam_generator

            self.mask_generator = build_sam_generator(self.sam_checkpoint, self.sam_model_type, str(self.device))
        cands = sam_candidates(self.mask_generator, image)
        if len(cands) == 0:
            raise ValueError("SAM's automatic masks gave no proposal with predicted IoU >= 0.3 on this image; "
                             "pass boxes= instead")
        return cands

    def mask_batch(self, image: torch.Tensor, texts: Sequence[str]) -> Any:
        """One DIT batch (``ReferBatch2D``): the letterboxed image once per sentence, no ground truth."""
        from datasets.batch2d import ReferBatch2D

        h, w = int(image.shape[1]), int(image.shape[2])
        empty = torch.zeros(h, w, dtype=torch.bool)
        base = self.transform(image, empty, "")  # the canvas does not depend on the sentence: letterbox once
        base.pop("flipped")
        items = [{**base, "text": t, "gt_original": empty, "original_hw": (h, w), "box": (0.0, 0.0, 0.0, 0.0),
                  "sample_id": f"input/{i}", "image_id": 0, "record": None} for i, t in enumerate(texts)]
        return ReferBatch2D.collate(items)

    def box_batch(self, image: torch.Tensor, texts: Sequence[str], cands: Candidates) -> Any:
        """One retrieval batch (``RetrievalBatch``): one image, its candidates, one expression query per sentence."""
        from datasets.batch_boxes import RetrievalBatch

        out = self.transform(image, list(texts))
        n = len(cands)
        queries = [{"text": t, "target": -1, "positives": np.zeros(n, bool), "gt_box": np.full(4, np.nan),
                    "category_id": 0, "query_id": f"input/{i}", "expression": True} for i, t in enumerate(out["texts"])]
        item = {"image": out["image"], "pad_tl": out["pad_tl"], "resized_hw": out["resized_hw"],
                "original_hw": (int(image.shape[1]), int(image.shape[2])), "flipped": False, "image_id": 0,
                "image_key": "input", "boxes": cands.boxes, "box_scores": cands.scores, "queries": queries}
        return RetrievalBatch.collate([item])

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def __call__(self, image: ImageSource | torch.Tensor, texts: str | Sequence[str],
                 boxes: Any = None) -> list[Mask2D] | list[Box2D]:
        """Answer each sentence about one image.

        Args:
            image: a ``.jpg`` / ``.png`` path, an (H, W, 3) uint8 RGB array, a PIL image or a (3, H, W) uint8 tensor.
            texts: one sentence or several.
            boxes: retrieval only: (N, 4) xyxy original-pixel candidates (or :class:`Candidates`); None uses SAM's
                automatic masks when a SAM checkpoint was given (else ValueError). DIT refuses boxes.

        Returns:
            DIT: one :class:`Mask2D` per sentence ((H, W) bool masks); retrieval: one :class:`Box2D` per sentence.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"sentence {i} is empty: {t!r}")
        img = self.load(image)
        if self.kind == "mask" and boxes is not None:
            raise ValueError("boxes= is for box-retrieval models; this is a DIT (mask) model")
        cands = self.candidates(img, boxes) if self.kind == "box" else None
        out: list[Any] = []
        for start in range(0, len(texts), self.max_texts):
            chunk = texts[start:start + self.max_texts]
            if cands is None:
                batch = self.mask_batch(img, chunk).to(self.device)
                out += [Mask2D(t, p.mask.cpu().numpy().astype(bool), float(p.score))
                        for t, p in zip(chunk, self.postprocess(self.model(batch), batch))]
            else:
                batch = self.box_batch(img, chunk, cands).to(self.device)
                out += [self._box(t, p, cands) for t, p in zip(chunk, self.postprocess(self.model(batch), batch))]
        return out

    @staticmethod
    def _box(text: str, p: Any, cands: Candidates) -> Box2D:
        # the candidate as given (float64), not the batch's float32 copy that the postprocess reads back
        box = cands.boxes[p.index].copy() if p.index >= 0 else np.full(4, math.nan)
        return Box2D(text=text, box=box, score=float(p.score), index=int(p.index), prob=float(p.prob))
