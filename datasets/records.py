"""One annotation record type for ScanRefer and Multi3DRefer descriptions (data spec §4, §6)."""

from __future__ import annotations

from dataclasses import dataclass

EVAL_TYPES = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt", "zt")


@dataclass(frozen=True)
class ReferRecord:
    """A description of zero, one or several objects of one scene.

    Attributes:
        scene_id: ScanNet scan, e.g. ``scene0011_00``.
        ann_id: the file's ``ann_id`` as int (ScanRefer: index among the descriptions of that object;
            Multi3DRefer: unique within the scene).
        object_ids: ScanNet objectIds of all targets; ``()`` is a zero-target description.
        object_name: the class name as written in the file (``coffee_table``).
        description: the description text after the documented normalisation (raw text in ``raw``).
        source: ``"scanrefer"`` or ``"multi3drefer"``.
        tokens: the file's pre-tokenized words (ScanRefer ``token``), if any.
        unique: ScanRefer's unique (True) / multiple (False) flag, None when not computed.
        eval_type: Multi3DRefer's eval_type (one of ``EVAL_TYPES``), None for ScanRefer.
        raw: the description exactly as in the file.
    """

    scene_id: str
    ann_id: int
    object_ids: tuple[int, ...]
    object_name: str
    description: str
    source: str
    tokens: tuple[str, ...] | None = None
    unique: bool | None = None
    eval_type: str | None = None
    raw: str | None = None

    @property
    def sample_id(self) -> str:
        """Composite key as a string: ``scene/object/ann`` (ScanRefer) or ``scene/ann`` (Multi3DRefer)."""
        if self.source == "scanrefer":
            return f"{self.scene_id}/{self.object_ids[0]}/{self.ann_id}"
        return f"{self.scene_id}/{self.ann_id}"

    @property
    def group(self) -> str | None:
        """Evaluation group: ``unique``/``multiple`` for ScanRefer, the eval_type for Multi3DRefer."""
        if self.eval_type is not None:
            return self.eval_type
        if self.unique is None:
            return None
        return "unique" if self.unique else "multiple"
