"""Checking a user's refer root: what ``grounding prepare refcoco --root DIR`` prints (refcoco spec §1).

Counts refs, sentences and images per dataset, partition and split, compares them with the official counts and
names every missing file and image.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets.errors import DataFormatError
from datasets.refcoco import (
    DATASETS,
    DEFAULT_SPLIT_BY,
    OFFICIAL_REF_COUNTS,
    OFFICIAL_SENTENCE_COUNTS,
    PARTITIONS,
    SPLIT_NAMES,
    build_expressions,
    read_instances,
    read_refs_pickle,
    refs_path,
    resolve_images_dir,
)


@dataclass
class PartitionCounts:
    """Refs and sentences per split label of one dataset partition, and how many images it uses."""

    dataset: str
    split_by: str
    refs: dict[str, int]
    sentences: dict[str, int]
    images: int


@dataclass
class ReferRootReport:
    """What ``check_refer_root`` found; ``ok`` is False when anything needed is missing or unreadable."""

    root: Path
    images_dir: Path
    partitions: list[PartitionCounts] = field(default_factory=list)
    absent_datasets: list[str] = field(default_factory=list)
    missing_files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images_referenced: int = 0
    missing_images: list[str] = field(default_factory=list)
    count_notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.partitions) and not (self.missing_files or self.errors or self.missing_images)

    def summary(self, show_missing: int = 5) -> str:
        lines = [f"RefCOCO family under {self.root} (images: {self.images_dir})"]
        for pc in self.partitions:
            lines.append(f"{pc.dataset}/{pc.split_by}: {sum(pc.refs.values())} refs, "
                         f"{sum(pc.sentences.values())} sentences, {pc.images} images")
            for split in sorted(pc.refs, key=lambda s: (SPLIT_NAMES.index(s) if s in SPLIT_NAMES else 99, s)):
                lines.append(f"  {split:<7} refs {pc.refs[split]:>6}  sentences {pc.sentences[split]:>7}")
        lines += [f"not present: {name}" for name in self.absent_datasets]
        lines += [f"note: {n}" for n in self.count_notes]
        lines += [f"missing file: {p}" for p in self.missing_files]
        lines += [f"error: {e}" for e in self.errors]
        if self.missing_images:
            n = len(self.missing_images)
            more = f" and {n - show_missing} more" if n > show_missing else ""
            lines.append(f"missing images: {n} of {self.images_referenced} in {self.images_dir}: "
                         f"{', '.join(self.missing_images[:show_missing])}{more}")
        else:
            lines.append(f"images: all {self.images_referenced} present")
        if not self.partitions and not self.errors:
            lines.append(f"no dataset found: expected {', '.join(d + '/' for d in DATASETS)} under {self.root}")
        problems = [f"{n} {what}" for n, what in ((len(self.missing_files), "missing file(s)"),
                                                  (len(self.errors), "unreadable file(s)"),
                                                  (len(self.missing_images), "missing image(s)")) if n]
        lines.append("OK" if self.ok else f"FAILED: {', '.join(problems) or 'no dataset found'}")
        return "\n".join(lines)


def check_refer_root(root: str | Path, images_dir: str | Path | None = None) -> ReferRootReport:
    """Load every partition of refcoco, refcoco+ and refcocog under ``root`` and report counts and gaps.

    A dataset folder that is absent is only noted; inside a present folder, ``instances.json`` and the
    default partition's pickle are required. Counts that differ from ``OFFICIAL_*_COUNTS`` are notes
    (a deliberate subset is legitimate); unreadable files and missing images make the report fail.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "RefCOCO root folder not found")
    report = ReferRootReport(root, resolve_images_dir(root, images_dir))
    image_files: set[Path] = set()
    for dataset in DATASETS:
        folder = root / dataset
        if not folder.is_dir():
            report.absent_datasets.append(dataset)
            continue
        present = [s for s in PARTITIONS[dataset] if refs_path(root, dataset, s).is_file()]
        if DEFAULT_SPLIT_BY[dataset] not in present:
            report.missing_files.append(refs_path(root, dataset, DEFAULT_SPLIT_BY[dataset]))
        if not (folder / "instances.json").is_file():
            report.missing_files.append(folder / "instances.json")
            continue
        try:
            inst = read_instances(folder / "instances.json")
        except DataFormatError as e:
            report.errors.append(str(e))
            continue
        for split_by in present:
            try:
                refs_file = refs_path(root, dataset, split_by)
                exprs = build_expressions(read_refs_pickle(refs_file), refs_file, inst, dataset, split_by, None,
                                          report.images_dir)
            except DataFormatError as e:
                report.errors.append(str(e))
                continue
            refs = {(e.split, e.ref_id) for e in exprs}
            pc = PartitionCounts(dataset, split_by, dict(Counter(s for s, _ in refs)),
                                 dict(Counter(e.split for e in exprs)), len({e.image_id for e in exprs}))
            report.partitions.append(pc)
            image_files.update(e.image_file for e in exprs)
            for split in pc.sentences:
                diffs = [f"{got} {what} (official {want})" for what, got, want in (
                    ("sentences", pc.sentences[split], OFFICIAL_SENTENCE_COUNTS.get((dataset, split_by, split))),
                    ("refs", pc.refs[split], OFFICIAL_REF_COUNTS.get((dataset, split_by, split))))
                    if want is not None and want != got]
                if diffs:
                    report.count_notes.append(f"{dataset}/{split_by}/{split}: {', '.join(diffs)}")
    report.images_referenced = len(image_files)
    if image_files and not report.images_dir.is_dir():
        report.missing_files.append(report.images_dir)
    report.missing_images = sorted(p.name for p in image_files if not p.is_file())
    return report
