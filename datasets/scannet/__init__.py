"""ScanNet v2: raw file I/O (spec §1), label tables, prepared scene folders (§2) and their preparers.

- :mod:`.raw`: read and write the four raw files of a scan.
- :mod:`.labels`: NYU40, ScanNet-20 and ScanRefer-18 tables, ``scannetv2-labels.combined.tsv``.
- :mod:`.scene`: :class:`PreparedScene`, the per-vertex arrays every 3D task reads.
- :mod:`.prepare`: raw scans -> prepared scenes (one scan, or a whole folder in parallel).
- :mod:`.pointcept`: Pointcept's per-point ``.npy`` scenes -> prepared scenes (no superpoints).
"""

from datasets.scannet.labels import (
    IGNORE_LABEL,
    NYU40_CLASSES,
    SCANNET20_CLASSES,
    SCANNET20_NYU40_IDS,
    SCANREFER_CLASSES,
    SCANREFER_OTHERS,
    TSV_HEADER,
    LabelRow,
    nyu40_to_scannet20,
    read_label_tsv,
    scanrefer_raw2label,
    write_label_tsv,
)
from datasets.scannet.pointcept import convert_pointcept, discover_pointcept, read_pointcept_scene
from datasets.scannet.prepare import (
    PrepareReport,
    assign_instances,
    discover_scans,
    fast_read_labels,
    fast_read_mesh,
    is_up_to_date,
    prepare_scannet,
    prepare_scene,
    read_split_file,
    save_atomic,
    source_stats,
)
from datasets.scannet.raw import (
    AGGREGATION_SUFFIX,
    LABELS_SUFFIX,
    MESH_SUFFIX,
    SEGS_SUFFIX,
    Mesh,
    SegGroup,
    read_aggregation,
    read_labels,
    read_mesh,
    read_segs,
    scan_files,
    write_aggregation,
    write_labels,
    write_mesh,
    write_segs,
)
from datasets.scannet.scene import ARRAYS, PREPARER_VERSION, PreparedScene

__all__ = [
    "AGGREGATION_SUFFIX", "ARRAYS", "IGNORE_LABEL", "LABELS_SUFFIX", "MESH_SUFFIX", "NYU40_CLASSES",
    "PREPARER_VERSION", "SCANNET20_CLASSES", "SCANNET20_NYU40_IDS", "SCANREFER_CLASSES", "SCANREFER_OTHERS",
    "SEGS_SUFFIX", "TSV_HEADER", "LabelRow", "Mesh", "PrepareReport", "PreparedScene", "SegGroup",
    "assign_instances", "convert_pointcept", "discover_pointcept", "discover_scans", "fast_read_labels",
    "fast_read_mesh", "is_up_to_date", "nyu40_to_scannet20", "prepare_scannet", "prepare_scene",
    "read_aggregation", "read_label_tsv", "read_labels", "read_mesh", "read_pointcept_scene", "read_segs",
    "read_split_file", "save_atomic", "scan_files", "scanrefer_raw2label", "source_stats", "write_aggregation",
    "write_label_tsv", "write_labels", "write_mesh", "write_segs",
]
