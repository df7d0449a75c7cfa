"""State-dict loading with a key report instead of a silent ``strict=False`` (rgsan-mdin spec §2, D17).

The originals load the SPFormer U-Net checkpoint into their whole model with non-strict matching, so a
renamed module or a wrong layout loads nothing and nobody notices. Here every load says which keys were
loaded, which the module expected but did not get (missing), which the file had but the module does not
(unexpected), which disagree in shape, and which were dropped on purpose by a prefix map (ignored).

Typical use, the U-Net part of a full SPFormer / RG-SAN / MDIN checkpoint into a :class:`SparseUNet`::

    report = load_state_dict_report(unet, path, prefix_map=SPARSE_UNET_PREFIXES)
    print(report.summary())
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

# Keep only the U-Net keys of a full checkpoint, under their own names.
SPARSE_UNET_PREFIXES: dict[str, str] = {p: p for p in ("input_conv.", "unet.", "output_layer.")}
# Where a training script nested the weights inside the saved dict (gorilla saves 'net', Lightning 'state_dict').
CONTAINER_KEYS = ("net", "state_dict", "model")


@dataclass
class LoadReport:
    """Outcome of :func:`load_state_dict_report`. Key names are in the module's naming (after the prefix map).

    Attributes:
        missing: keys the module has and the checkpoint lacks (left at their current values).
        unexpected: checkpoint keys the module does not have (not loaded).
        shape_mismatch: ``(key, checkpoint shape, module shape)`` for keys present on both sides (not loaded).
        loaded: keys copied into the module.
        ignored: checkpoint keys (original names) that matched no prefix of the prefix map (dropped on purpose).
        source: where the weights came from (a path, or ``"<state dict>"``).
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    source: str = "<state dict>"

    @property
    def ok(self) -> bool:
        """True when every module key was loaded and every kept checkpoint key was used."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def summary(self, max_keys: int = 20) -> str:
        """A multi-line human-readable report listing up to ``max_keys`` keys per problem kind."""
        lines = [f"checkpoint {self.source}: loaded {len(self.loaded)}, missing {len(self.missing)}, "
                 f"unexpected {len(self.unexpected)}, shape mismatch {len(self.shape_mismatch)}, "
                 f"ignored by prefix map {len(self.ignored)}"]

        def listing(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title}:")
                lines.extend(f"    {item}" for item in items[:max_keys])
                if len(items) > max_keys:
                    lines.append(f"    ... and {len(items) - max_keys} more")

        listing("missing (kept module values)", self.missing)
        listing("unexpected (not loaded)", self.unexpected)
        listing("shape mismatch (checkpoint vs module; not loaded)",
                [f"{k}: {list(a)} vs {list(b)}" for k, a, b in self.shape_mismatch])
        return "\n".join(lines)


class CheckpointMismatchError(RuntimeError):
    """Raised by a strict :func:`load_state_dict_report`; ``.report`` holds the full :class:`LoadReport`."""

    def __init__(self, report: LoadReport) -> None:
        super().__init__("strict checkpoint load failed, nothing was loaded\n" + report.summary())
        self.report = report


def read_state_dict(source: str | os.PathLike[str] | Mapping[str, object],
                    trust_pickle: bool = False) -> dict[str, Tensor]:
    """The flat ``name -> tensor`` dict of a checkpoint file or an in-memory (possibly nested) checkpoint.

    Args:
        source: a ``.pth`` path, or a mapping. A mapping that holds a dict under ``net``, ``state_dict`` or
            ``model`` (checked in that order) is unwrapped first.
        trust_pickle: load with ``weights_only=False``. Only for files you trust: a full pickle can run code.
            Needed when the file also stores non-tensor objects torch's safe loader refuses.

    Raises:
        ValueError: when the file cannot be read safely, or holds no tensor dict (names the file and what it found).
    """
    name = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    if isinstance(source, Mapping):
        obj: object = source
    else:
        try:
            obj = torch.load(name, map_location="cpu", weights_only=not trust_pickle)
        except Exception as err:  # torch raises UnpicklingError / RuntimeError depending on the content
            hint = "" if trust_pickle else " (if you trust the file, retry with trust_pickle=True)"
            raise ValueError(f"cannot read checkpoint {name}: {err}{hint}") from err
    for key in CONTAINER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {name}: expected a state dict (or one under {CONTAINER_KEYS}), "
                         f"got {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors and obj:
        raise ValueError(f"checkpoint {name}: no tensors found; top-level keys are {sorted(obj)[:10]}")
    return tensors


def apply_prefix_map(state_dict: Mapping[str, Tensor], prefix_map: Mapping[str, str] | None
                     ) -> tuple[dict[str, Tensor], list[str]]:
    """Rename keys by their first matching prefix and drop the others.

    ``{"module.": ""}`` strips a DDP prefix; ``SPARSE_UNET_PREFIXES`` keeps only the U-Net of a full model;
    ``{"input_conv.": "backbone.input_conv.", ...}`` moves it under a parent. Prefixes are tried longest first,
    so a specific rule wins over a general one. With ``None`` every key is kept unchanged.

    Returns:
        ``(renamed, ignored)``: the kept keys under their new names, and the original names of the dropped ones.
    """
    if prefix_map is None:
        return dict(state_dict), []
    rules = sorted(prefix_map.items(), key=lambda kv: len(kv[0]), reverse=True)
    renamed: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in state_dict.items():
        for old, new in rules:
            if key.startswith(old):
                target = new + key[len(old):]
                if target in renamed:
                    raise ValueError(f"prefix map sends two checkpoint keys to {target!r} (second: {key!r})")
                renamed[target] = value
                break
        else:
            ignored.append(key)
    return renamed, ignored


def spconv1_to_spconv2(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Permute 5-D sparse-conv weights from spconv 1.x ``[k, k, k, in, out]`` to spconv 2.x ``[out, k, k, k, in]``.

    Spec §2: spconv 1.x weight layout differs. Only 5-D tensors are touched (BN parameters are 1-D); a 1x1
    ``i_branch`` weight is 5-D too and is permuted the same way.
    """
    return {k: (v.permute(4, 0, 1, 2, 3).contiguous() if v.ndim == 5 else v) for k, v in state_dict.items()}


def load_state_dict_report(module: nn.Module, state_dict_or_path: str | os.PathLike[str] | Mapping[str, object],
                           prefix_map: Mapping[str, str] | None = None, strict: bool = True,
                           spconv1_layout: bool = False, trust_pickle: bool = False) -> LoadReport:
    """Load weights into ``module`` and say exactly what happened.

    Args:
        module: the target module (e.g. :class:`pointcloud.backbone.SparseUNet`).
        state_dict_or_path: a ``.pth`` path or a mapping; nested ``net`` / ``state_dict`` / ``model`` dicts are
            unwrapped (see :func:`read_state_dict`).
        prefix_map: ``{checkpoint prefix: module prefix}``; keys matching no prefix are dropped and listed as
            ``ignored`` (see :func:`apply_prefix_map`). ``None`` keeps all keys.
        strict: raise :class:`CheckpointMismatchError` *before* touching the module when any key is missing,
            unexpected or of the wrong shape. With ``strict=False`` the matching keys are loaded and the rest is
            only reported, never hidden.
        spconv1_layout: the file comes from spconv 1.x; convert conv weights with :func:`spconv1_to_spconv2`.
        trust_pickle: see :func:`read_state_dict`.

    Returns:
        The :class:`LoadReport` (also when nothing went wrong).
    """
    source = "<state dict>" if isinstance(state_dict_or_path, Mapping) else os.fspath(state_dict_or_path)
    raw = read_state_dict(state_dict_or_path, trust_pickle=trust_pickle)
    incoming, ignored = apply_prefix_map(raw, prefix_map)
    if spconv1_layout:
        incoming = spconv1_to_spconv2(incoming)
    expected = module.state_dict()
    report = LoadReport(ignored=ignored, source=source)
    usable: dict[str, Tensor] = {}
    for key, value in incoming.items():
        if key not in expected:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            report.shape_mismatch.append((key, tuple(value.shape), tuple(expected[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in expected if k not in incoming]
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    result = module.load_state_dict(usable, strict=False)
    # Load hooks could still refuse keys the plain comparison accepted; fold torch's own verdict in.
    report.unexpected += [k for k in result.unexpected_keys if k not in report.unexpected]
    refused = set(result.unexpected_keys)
    report.loaded = [k for k in usable if k not in refused]
    if strict and not report.ok:
        raise CheckpointMismatchError(report)
    return report
