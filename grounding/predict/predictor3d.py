"""``Predictor3D``: a trained RG-SAN or MDIN model answering free-form sentences about one scene.

>>> predictor = Predictor3D.from_pretrained("exports/rgsan")           # or a run's checkpoints/last.ckpt
>>> masks = predictor("scan.ply", ["the chair next to the desk", "the lamp"])
>>> masks[0].mask.shape                                                 # (N,) bool, input point order

The scene is read and normalised once (:mod:`grounding.predict.scene`), transformed as at validation
(``ValTransform`` with the run's voxel scale), and the sentences are batched with it in chunks of up to 64
descriptions, the evaluation batch of both models: one network pass per chunk, which encodes the scene once and
decodes every sentence of the chunk. Model and postprocess are built from the run's config, so the answer is
exactly what ``grounding eval`` would produce for the same scene and sentence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from datasets.batch3d import ReferBatch3D
from datasets.records import ReferRecord
from datasets.refer3d import description_targets
from datasets.text_normalise import normalise
from datasets.transforms import ValTransform
from datasets.transforms.pipeline import DEFAULT_SCALE
from grounding.predict.scene import Scene3D, SceneSource, load_scene
from grounding.predict.weights import (
    check_targets,
    checkpoint_model_state,
    find_run_config,
    read_config,
    safe_torch_load,
)

log = logging.getLogger(__name__)
MAX_DESCRIPTIONS = 64  # descriptions per network pass: the evaluation batch of RG-SAN and MDIN


@dataclass
class Mask3D:
    """The answer to one sentence.

    Attributes:
        text: the sentence as given (the model saw it after ``datasets.text_normalise.normalise``).
        mask: (N,) bool numpy array over the input points, in input order (point i of the file / array).
        score: RG-SAN: the predicted IoU of the mask; MDIN: the highest target probability among its queries.
        no_target: MDIN's "no target" answer (then ``mask`` is all False); None for RG-SAN, which always answers.
        objects: MDIN: one (N,) bool mask per predicted object (their union is ``mask``); empty for RG-SAN.
        target_word: RG-SAN: the word its output query stands for; None for MDIN.
    """

    text: str
    mask: np.ndarray
    score: float
    no_target: bool | None = None
    objects: list[np.ndarray] = field(default_factory=list)
    target_word: str | None = None

    @property
    def num_points(self) -> int:
        """Points in the mask."""
        return int(self.mask.sum())


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_weights(path: Path, config: str | Path | None) -> tuple[dict[str, torch.Tensor], DictConfig, list[str]]:
    """(state dict, run config, exempt prefixes) from an export folder or a Lightning checkpoint."""
    from grounding.export import load_export  # here: grounding.export imports this package's weights module

    if path.is_dir():
        state, cfg, exempt = load_export(path)
        return state, (read_config(config) if config is not None else cfg), exempt
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist (expected an export folder or a .ckpt file)")
    cfg = read_config(config if config is not None else find_run_config(path))
    state, exempt = checkpoint_model_state(safe_torch_load(path), path)
    return state, cfg, exempt


def build_network(cfg: DictConfig, source: str | Path) -> tuple[nn.Module, Any]:
    """Instantiate ``model.net`` and ``model.postprocess`` of a run config (targets checked first)."""
    check_targets(cfg, ("model.net", "model.postprocess"), source)
    if OmegaConf.select(cfg, "model.postprocess") is None:
        raise ValueError(f"{source}: the config has no model.postprocess")
    return instantiate(cfg.model.net), instantiate(cfg.model.postprocess)


def load_network_state(model: nn.Module, state: dict[str, torch.Tensor], exempt: list[str], source: str | Path) -> None:
    """Strict load, except that weights under ``exempt`` prefixes may be missing (rebuilt by the constructor)."""
    result = model.load_state_dict(state, strict=False)
    prefixes = tuple(exempt)
    missing = [k for k in result.missing_keys if not (prefixes and k.startswith(prefixes))]
    if missing or result.unexpected_keys:
        raise ValueError(f"{source}: the weights do not fit the model built from its config: missing "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected "
                         f"{result.unexpected_keys[:8]}{' ...' if len(result.unexpected_keys) > 8 else ''}")


class Predictor3D:
    """RG-SAN / MDIN inference on any scene input (see the module docstring).

    Args:
        model: the network (``task.model``), in eval mode on ``device`` after construction.
        postprocess: the run's postprocess (``RGSANPostprocess`` or ``MDINPostprocess``).
        scale: voxels per metre of the validation transform (the run's ``data.val.transform.scale``).
        device: where the network runs.
        max_descriptions: sentences per network pass (<= 64 recommended: the models were evaluated so).
    """

    def __init__(self, model: nn.Module, postprocess: Any, scale: float = DEFAULT_SCALE,
                 device: str | torch.device | None = "cpu", max_descriptions: int = MAX_DESCRIPTIONS) -> None:
        if max_descriptions < 1:
            raise ValueError(f"max_descriptions must be >= 1, got {max_descriptions}")
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.postprocess = postprocess
        self.transform = ValTransform(scale)
        self.max_descriptions = max_descriptions

    @classmethod
    def from_config(cls, cfg: DictConfig, state: dict[str, torch.Tensor] | None = None, exempt: Sequence[str] = (),
                    device: str | torch.device | None = "cpu", source: str | Path = "<config>") -> Predictor3D:
        """Build from a run config; load ``state`` (network keys) when given."""
        model, postprocess = build_network(cfg, source)
        if state is not None:
            load_network_state(model, state, list(exempt), source)
        scale = float(OmegaConf.select(cfg, "data.val.transform.scale", default=DEFAULT_SCALE) or DEFAULT_SCALE)
        return cls(model, postprocess, scale=scale, device=device)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = "cpu",
                        config: str | Path | None = None) -> Predictor3D:
        """Load an export folder (``grounding export``) or a Lightning ``.ckpt`` (read with ``weights_only=True``).

        Args:
            path: export folder, or ``<run_dir>/checkpoints/*.ckpt`` (its config is ``<run_dir>/config.yaml``).
            device: ``"cpu"``, ``"cuda"``, ... or None for CUDA when available.
            config: a run config overriding the one found with the weights.

        Raises:
            UnsafeCheckpointError: a ``.ckpt`` that needs arbitrary unpickling (nothing of it is executed).
        """
        path = Path(path)
        state, cfg, exempt = _load_weights(path, config)
        return cls.from_config(cfg, state, exempt, device=device, source=path)

    # ------------------------------------------------------------------ inference
    def load(self, scene: SceneSource | Scene3D, **kwargs: Any) -> Scene3D:
        """Read and normalise a scene once (``kwargs`` as :func:`~grounding.predict.scene.load_scene`)."""
        return scene if isinstance(scene, Scene3D) and not kwargs else load_scene(scene, **kwargs)

    def scene_item(self, scene: Scene3D) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """The validation transform's arrays and the point tensors of a dataset item (no descriptions yet)."""
        arrays = self.transform(scene.to_prepared())
        tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k]))
                   for k in ("xyz", "xyz_middle", "color", "semantic", "instance", "point_index", "superpoint")}
        return arrays, tensors

    def batch(self, scene: Scene3D, texts: Sequence[str], arrays: dict[str, np.ndarray] | None = None,
              tensors: dict[str, torch.Tensor] | None = None, first_index: int = 0) -> ReferBatch3D:
        """One batch: the scene and ``texts`` (unlabelled records: no targets, Multi3DRefer-style sample ids)."""
        if arrays is None or tensors is None:
            arrays, tensors = self.scene_item(scene)
        records = []
        for i, text in enumerate(texts):
            clean = normalise(text)
            if not clean:
                raise ValueError(f"sentence {first_index + i} is empty after normalisation: {text!r}")
            records.append(ReferRecord(scene.scene_id, first_index + i, (), "", clean, "multi3drefer", raw=text))
        item: dict[str, Any] = {"scene_id": scene.scene_id, "num_original_points": scene.num_points,
                                "records": records, **tensors}
        item.update({k: torch.from_numpy(v) for k, v in description_targets(arrays, records).items()})
        return ReferBatch3D.collate([item])

    @torch.no_grad()
    def __call__(self, scene: SceneSource | Scene3D, texts: str | Sequence[str]) -> list[Mask3D]:
        """Segment what each sentence refers to.

        Args:
            scene: any input of :func:`~grounding.predict.scene.load_scene`, or a :class:`Scene3D` from :meth:`load`.
            texts: one sentence or several.

        Returns:
            One :class:`Mask3D` per sentence, in order; masks are (N,) bool over the input points in input order.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        scene = self.load(scene)
        arrays, tensors = self.scene_item(scene)  # once, shared by every chunk
        out: list[Mask3D] = []
        for start in range(0, len(texts), self.max_descriptions):
            chunk = texts[start:start + self.max_descriptions]
            batch = self.batch(scene, chunk, arrays, tensors, first_index=start).to(self.device)
            predictions = self.postprocess(self.model(batch), batch)
            out += [self._mask(text, p) for text, p in zip(chunk, predictions)]
        return out

    @staticmethod
    def _mask(text: str, p: Any) -> Mask3D:
        no_target = getattr(p, "no_target", None)
        objects = [o.cpu().numpy().astype(bool) for o in getattr(p, "objects", [])]
        return Mask3D(text=text, mask=p.pred_mask.cpu().numpy().astype(bool), score=float(p.score),
                      no_target=None if no_target is None else bool(no_target), objects=objects,
                      target_word=getattr(p, "target_word", None))
