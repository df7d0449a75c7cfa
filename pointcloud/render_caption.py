"""Caption and legend band under a render (PIL): wrapped description text and colour swatches.

Helper of :mod:`pointcloud.render`. The band is dark (``BAND_RGB``) with light text, so that it is
easy to tell apart from the white render above it, for people and for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BAND_RGB = (32, 32, 32)
TEXT_RGB = (240, 240, 240)
NOTE_RGB = (240, 228, 66)  # status lines ("prediction: no target"): yellow, so they stand out from the caption
MAX_CAPTION_LINES = 4
MIN_RENDER_HEIGHT = 48


@dataclass(frozen=True)
class LegendEntry:
    """One legend item: a colour swatch (None for text only, e.g. the IoU) and its label."""

    rgb: tuple[int, int, int] | None
    label: str


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        # Pillow >= 10.1 ships a scalable default font when FreeType is available.
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # older Pillow or no FreeType: fixed bitmap font, still readable
        return ImageFont.load_default()


def _wrap(text: str, font, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap by measured pixel width; the last kept line ends in an ellipsis if text remains."""
    words = " ".join(str(text).split()).split(" ")
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= max_width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    lines = [_fit(line, font, max_width) for line in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(lines[-1] + " …", font, max_width, force_ellipsis=True)
    return lines


def _fit(line: str, font, max_width: float, force_ellipsis: bool = False) -> str:
    """Cut a single over-long line (one very long word) to the width, ending it with an ellipsis."""
    if font.getlength(line) <= max_width and not force_ellipsis:
        return line
    base = line.removesuffix(" …")
    while base and font.getlength(base + "…") > max_width:
        base = base[:-1]
    return base.rstrip() + "…"


def _layout_legend(legend: list[LegendEntry], font, swatch: int, pad: int, width: int) -> list[list]:
    """Place legend entries left to right, starting a new row when the next one would not fit."""
    rows: list[list] = [[]]
    x = pad
    for entry in legend:
        w = (swatch + pad // 2 if entry.rgb is not None else 0) + int(font.getlength(entry.label))
        if rows[-1] and x + w > width - pad:
            rows.append([])
            x = pad
        rows[-1].append((x, entry))
        x += w + 2 * pad
    return rows if rows[0] else []


def compose_with_band(
    draw_render: Callable[[int], np.ndarray],
    width: int,
    height: int,
    caption: str | None,
    legend: list[LegendEntry],
    notes: Sequence[str] = (),
) -> Image.Image:
    """Build a ``width x height`` RGB image: the render on top and a dark caption/legend band below.

    Args:
        draw_render: called with the render height (``height`` minus the band) and returning a
            (render_height, width, 3) uint8 image.
        caption: wrapped to at most ``MAX_CAPTION_LINES`` lines; None or blank draws the legend only.
        legend: drawn on the last line of the band.
        notes: status lines (e.g. ``"prediction: no target"``), one line each in ``NOTE_RGB`` between the
            caption and the legend; never cut by a long caption. Empty: the band is exactly as without them.
    """
    font_size = max(12, round(height / 40))
    font = _font(font_size)
    pad = max(4, font_size // 2)
    line_h = round(font_size * 1.3)
    lines = _wrap(caption, font, width - 2 * pad, MAX_CAPTION_LINES) if caption and caption.strip() else []
    swatch = max(8, font_size - 4)
    legend_rows = _layout_legend(legend, font, swatch, pad, width)
    note_lines = [_fit(" ".join(str(n).split()), font, width - 2 * pad) for n in notes if str(n).strip()]
    band_h = 2 * pad + line_h * (len(lines) + len(note_lines) + len(legend_rows))
    render_h = height - band_h
    if render_h < MIN_RENDER_HEIGHT:
        raise ValueError(f"image height {height} leaves {render_h} px for the render after the caption band")
    render = np.asarray(draw_render(render_h), dtype=np.uint8)
    if render.shape != (render_h, width, 3):
        raise RuntimeError(f"renderer returned shape {render.shape}, expected {(render_h, width, 3)}")

    image = Image.new("RGB", (width, height), BAND_RGB)
    image.paste(Image.fromarray(render, "RGB"), (0, 0))
    pen = ImageDraw.Draw(image)
    y = render_h + pad
    for line in lines:
        pen.text((pad, y), line, fill=TEXT_RGB, font=font)
        y += line_h
    for line in note_lines:
        pen.text((pad, y), line, fill=NOTE_RGB, font=font)
        y += line_h
    for row in legend_rows:
        for x, entry in row:
            if entry.rgb is not None:
                top = y + (line_h - swatch) // 2
                pen.rectangle([x, top, x + swatch, top + swatch], fill=tuple(entry.rgb))
                x += swatch + pad // 2
            pen.text((x, y), entry.label, fill=TEXT_RGB, font=font)
        y += line_h
    return image
