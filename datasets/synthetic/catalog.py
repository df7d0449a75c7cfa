"""The object classes of the synthetic rooms: raw categories, NYU40 ids, words, sizes and colours.

The raw category is what ScanNet's ``aggregation.json`` stores as ``label`` and what the generated
``scannetv2-labels.combined.tsv`` maps to NYU40 (column 1 -> columns 4 and 7). The NYU40 ids follow
ScanNet's own label map for the same raw names (e.g. ``trash can`` -> 39 otherfurniture, ``tv`` -> 25
television, ``nightstand`` -> 32 night stand), so ScanRefer's raw2label gives the same ScanRefer-18
class as it would on real data: lamps, pillows, tvs, trash cans, nightstands, dressers and whiteboards
all fall into "others" (17).

Sizes are (width along the object's front, depth, height) ranges in metres; the object's local frame
has its front toward +y, its back toward -y, its base at z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasets.scannet.labels import NYU40_CLASSES, LabelRow

Range = tuple[float, float]


@dataclass(frozen=True)
class ClassSpec:
    """One raw category.

    Attributes:
        label: raw category (aggregation label, TSV raw_category); ScanRefer object_name is this
            with spaces replaced by underscores.
        nyu40id: NYU40 id (1..40) as in ScanNet's label map.
        nouns: (singular, plural) words for it; the first pair is the usual one, others are synonyms.
        size: (width, depth, height) ranges, metres.
        colors: palette names an instance may take.
        mount: "floor" (stands on the floor), "wall" (hangs on a wall) or "onto" (stands on furniture).
    """

    label: str
    nyu40id: int
    nouns: tuple[tuple[str, str], ...]
    size: tuple[Range, Range, Range]
    colors: tuple[str, ...]
    mount: str = "floor"

    @property
    def nyu40class(self) -> str:
        return NYU40_CLASSES[self.nyu40id - 1]

    @property
    def object_name(self) -> str:
        return self.label.replace(" ", "_")


WOOD = ("brown", "black", "white", "gray")
FABRIC = ("red", "blue", "green", "brown", "black", "white", "gray", "yellow")
PLAIN = ("white", "gray", "black")

CLASSES: dict[str, ClassSpec] = {c.label: c for c in [
    ClassSpec("chair", 5, (("chair", "chairs"),), ((0.42, 0.58), (0.45, 0.58), (0.78, 1.05)),
              ("brown", "black", "red", "blue", "gray", "white", "green")),
    ClassSpec("table", 7, (("table", "tables"),), ((0.8, 1.9), (0.6, 1.0), (0.68, 0.78)), WOOD),
    ClassSpec("desk", 14, (("desk", "desks"),), ((1.0, 1.7), (0.55, 0.75), (0.72, 0.78)), WOOD),
    ClassSpec("cabinet", 3, (("cabinet", "cabinets"),), ((0.5, 1.2), (0.4, 0.6), (0.6, 1.3)),
              ("brown", "white", "gray", "black", "blue")),
    ClassSpec("bookshelf", 10, (("bookshelf", "bookshelves"), ("bookcase", "bookcases")),
              ((0.6, 1.2), (0.28, 0.4), (1.0, 2.0)), WOOD),
    ClassSpec("bed", 4, (("bed", "beds"),), ((0.95, 1.8), (1.95, 2.15), (0.85, 1.15)), FABRIC),
    ClassSpec("pillow", 18, (("pillow", "pillows"),), ((0.42, 0.62), (0.3, 0.42), (0.1, 0.16)), FABRIC, "onto"),
    ClassSpec("nightstand", 32, (("nightstand", "nightstands"), ("night stand", "night stands")),
              ((0.4, 0.55), (0.35, 0.45), (0.45, 0.62)), WOOD),
    ClassSpec("dresser", 17, (("dresser", "dressers"),), ((0.8, 1.5), (0.45, 0.55), (0.75, 1.1)), WOOD),
    ClassSpec("couch", 6, (("couch", "couches"), ("sofa", "sofas")), ((1.4, 2.3), (0.8, 0.95), (0.75, 0.92)),
              FABRIC),
    ClassSpec("lamp", 35, (("lamp", "lamps"),), ((0.25, 0.45), (0.25, 0.45), (0.4, 0.65)),
              ("white", "yellow", "black", "red", "blue", "gray"), "onto"),
    ClassSpec("tv", 25, (("tv", "tvs"), ("television", "televisions")), ((0.6, 1.3), (0.05, 0.08), (0.4, 0.8)),
              PLAIN, "onto"),
    ClassSpec("picture", 11, (("picture", "pictures"), ("painting", "paintings")),
              ((0.35, 1.0), (0.025, 0.035), (0.3, 0.8)), FABRIC, "wall"),
    ClassSpec("window", 9, (("window", "windows"),), ((0.7, 1.5), (0.06, 0.07), (0.8, 1.2)),
              ("white", "gray", "brown", "black"), "wall"),
    ClassSpec("door", 8, (("door", "doors"),), ((0.8, 0.95), (0.045, 0.05), (2.0, 2.1)), WOOD, "wall"),
    ClassSpec("whiteboard", 30, (("whiteboard", "whiteboards"),), ((1.2, 2.0), (0.03, 0.04), (0.9, 1.2)),
              ("white",), "wall"),
    ClassSpec("trash can", 39, (("trash can", "trash cans"), ("trash bin", "trash bins")),
              ((0.24, 0.4), (0.24, 0.4), (0.3, 0.7)), ("gray", "black", "blue", "green", "white", "red")),
    ClassSpec("refrigerator", 24, (("refrigerator", "refrigerators"), ("fridge", "fridges")),
              ((0.6, 0.9), (0.6, 0.75), (1.5, 1.9)), PLAIN),
    ClassSpec("kitchen counter", 12, (("kitchen counter", "kitchen counters"), ("counter", "counters")),
              ((1.2, 2.6), (0.6, 0.65), (0.88, 0.92)), ("white", "gray", "brown", "black")),
    ClassSpec("sink", 34, (("sink", "sinks"),), ((0.45, 0.6), (0.35, 0.45), (0.8, 0.9)), ("white", "gray")),
    ClassSpec("toilet", 33, (("toilet", "toilets"),), ((0.38, 0.48), (0.62, 0.72), (0.72, 0.82)), ("white", "gray")),
    ClassSpec("bathtub", 36, (("bathtub", "bathtubs"), ("tub", "tubs")), ((1.5, 1.75), (0.7, 0.8), (0.5, 0.6)),
              ("white", "gray", "blue")),
]}

STRUCTURE_ROWS = (LabelRow("wall", 1, "wall"), LabelRow("floor", 2, "floor"))


def label_rows() -> list[LabelRow]:
    """TSV rows for every raw category the generator writes (walls, floor, all classes), sorted by name."""
    rows = list(STRUCTURE_ROWS) + [LabelRow(c.label, c.nyu40id, c.nyu40class) for c in CLASSES.values()]
    return sorted(rows, key=lambda r: r.raw_category)


def noun(label: str, plural: bool = False, synonym: int = 0) -> str:
    """The word for a class; ``synonym`` picks among its synonyms (wrapping around)."""
    pairs = CLASSES[label].nouns
    return pairs[synonym % len(pairs)][1 if plural else 0]
