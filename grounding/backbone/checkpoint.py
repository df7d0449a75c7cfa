"""Official SAM checkpoints into toolkit modules, by SAM's own key names, with a key report (refcoco-dit §4.3).

An official file (``sam_vit_b_01ec64.pth`` ...) is a flat state dict with keys ``image_encoder.*``,
``prompt_encoder.*`` and ``mask_decoder.*`` (314 tensors for vit_b). A prefix map renames them onto the
target module (identity for :class:`segmentation.dit.DIT`, whose sub-modules carry SAM's names;
``{"image_encoder.": ""}`` for a bare :class:`~grounding.backbone.sam_vit.TextAwareViT`). The load itself is
``strict=False``, but never silent (spec §2.3 toolkit rule):

- a key present on both sides with different shapes raises, naming the key and both shapes;
- a module key the checkpoint lacks raises unless it belongs to a module the toolkit adds on top of SAM
  (``new_prefixes``: DIT's injection layers, its text projection, the backbone's text gate);
- checkpoint keys the module lacks (after the prefix map) are returned and logged as a warning
  (``raise_on_unexpected`` turns them into an error);
- the report (loaded / missing / unexpected / ignored) is returned and its summary logged.

Shapes are never resized here: the toolkit builds the encoder at the pretraining size (1024) and resizes
``pos_embed`` and the rel-pos tables at run time (DIT's approach, §4.3 toolkit rule), which the log says.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SAM_PREFIXES", "SamCheckpointError", "SamLoadReport", "load_sam_weights", "read_sam_state_dict"]

log = logging.getLogger(__name__)

SAM_PREFIXES: tuple[str, ...] = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
_CONTAINERS = ("state_dict", "model", "net")


class SamCheckpointError(RuntimeError):
    """A SAM checkpoint does not fit the module (wrong shape, or a pretrained key missing); nothing was loaded."""


@dataclass
class SamLoadReport:
    """What :func:`load_sam_weights` did. Key names are the module's (after the prefix map).

    Attributes:
        source: the file path, or ``"<state dict>"``.
        loaded: module keys copied from the checkpoint.
        missing: module keys the checkpoint lacks (all under ``new_prefixes``; kept at their init values).
        unexpected: checkpoint keys (renamed) the module does not have (not loaded).
        ignored: checkpoint keys (original names) that no prefix of the map matched (dropped on purpose).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self, max_keys: int = 12) -> str:
        """Multi-line text: counts, then up to ``max_keys`` names per kind."""
        lines = [f"SAM checkpoint {self.source}: loaded {len(self.loaded)}, missing {len(self.missing)} "
                 f"(new modules, left at init), unexpected {len(self.unexpected)}, ignored by prefix map "
                 f"{len(self.ignored)}; pos_embed and rel-pos tables keep their pretrained shapes and are "
                 "resized at run time"]
        for title, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:max_keys]) + (f", ... {len(keys) - max_keys} more" if len(keys) > max_keys
                                                      else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


def read_sam_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Tensor]:
    """The flat ``name -> tensor`` dict of a SAM checkpoint file (CPU, safe loader) or an in-memory dict.

    A dict nested under ``state_dict`` / ``model`` / ``net`` (training-script checkpoints) is unwrapped.

    Raises:
        SamCheckpointError: when the file cannot be read or holds no tensors.
    """
    name = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        try:
            obj = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as err:  # FileNotFoundError, UnpicklingError, RuntimeError depending on the content
            raise SamCheckpointError(f"cannot read SAM checkpoint {name}: {err}") from err
    for key in _CONTAINERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise SamCheckpointError(f"SAM checkpoint {name}: no tensors found; expected keys such as "
                                 "'image_encoder.pos_embed'")
    return tensors


def _shape_hint(key: str) -> str:
    if key.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
        return (" (official checkpoints are pretrained at img_size 1024: build the encoder with img_size=1024 and "
                "let it resize pos_embed / rel-pos tables at run time)")
    return ""


def load_sam_weights(module: nn.Module, source: str | os.PathLike[str] | Mapping[str, Any],
                     prefix_map: Mapping[str, str] | None = None, new_prefixes: Sequence[str] = (),
                     skip_prefixes: Sequence[str] = (), raise_on_unexpected: bool = False) -> SamLoadReport:
    """Load SAM weights into ``module`` by key name and report exactly what happened.

    Args:
        module: the target (``DIT``, ``TextAwareViT``, ...).
        source: a ``.pth`` path or a state dict with SAM's keys.
        prefix_map: ``{checkpoint prefix: module prefix}``, longest prefix first; keys matching none are
            ignored. None = identity on SAM's three prefixes.
        new_prefixes: module key prefixes that official checkpoints cannot contain (modules added on top of
            SAM); only these may be missing.
        skip_prefixes: module key prefixes outside SAM's scope (e.g. ``text_encoder.``, pretrained
            separately): neither loaded nor reported.
        raise_on_unexpected: raise instead of warning when checkpoint keys find no module key.

    Returns:
        The :class:`SamLoadReport` (also logged).

    Raises:
        SamCheckpointError: on any shape mismatch (key and both shapes), any missing key outside
            ``new_prefixes``, unexpected keys with ``raise_on_unexpected``, or an unreadable file.
            Raised before anything is copied.
    """
    name = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    raw = read_sam_state_dict(source)
    rules = sorted((prefix_map if prefix_map is not None else {p: p for p in SAM_PREFIXES}).items(),
                   key=lambda kv: len(kv[0]), reverse=True)
    incoming: dict[str, Tensor] = {}
    report = SamLoadReport(source=name)
    for key, value in raw.items():
        for old, new in rules:
            if key.startswith(old):
                incoming[new + key[len(old):]] = value
                break
        else:
            report.ignored.append(key)

    skip = tuple(skip_prefixes)
    expected = {k: v for k, v in module.state_dict().items() if not (skip and k.startswith(skip))}
    mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in incoming.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        lines = [f"  {k}: checkpoint {list(a)} vs model {list(b)}{_shape_hint(k)}" for k, a, b in mismatched]
        raise SamCheckpointError(f"SAM checkpoint {name} does not fit {type(module).__name__}: "
                                 f"{len(mismatched)} shape mismatch(es), nothing loaded\n" + "\n".join(lines))
    report.missing = [k for k in expected if k not in incoming]
    new = tuple(new_prefixes)
    not_new = [k for k in report.missing if not (new and k.startswith(new))]
    if not_new:
        raise SamCheckpointError(f"SAM checkpoint {name} lacks {len(not_new)} pretrained key(s) of "
                                 f"{type(module).__name__} (only {list(new)} may be missing), nothing loaded: "
                                 + ", ".join(not_new[:20]) + (" ..." if len(not_new) > 20 else ""))
    report.unexpected = [k for k in incoming if k not in expected]
    if report.unexpected and raise_on_unexpected:
        raise SamCheckpointError(f"SAM checkpoint {name}: {len(report.unexpected)} key(s) have no place in "
                                 f"{type(module).__name__}, nothing loaded: " + ", ".join(report.unexpected[:20]))
    usable = {k: v for k, v in incoming.items() if k in expected}
    result = module.load_state_dict(usable, strict=False)
    refused = set(result.unexpected_keys)
    report.loaded = [k for k in usable if k not in refused]
    report.unexpected += [k for k in refused if k not in report.unexpected]
    log.info("%s", report.summary())
    if report.unexpected:
        log.warning("SAM checkpoint %s: %d key(s) not loaded (no such module key): %s", name,
                    len(report.unexpected), ", ".join(report.unexpected[:12]))
    return report
