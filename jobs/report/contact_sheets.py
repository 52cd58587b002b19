"""``sdbatch report --sheets``: one PNG grid per group, like AUTOMATIC1111's X/Y/Z plot images,
with the group, the axis names and every axis value drawn on it, made from the report's thumbnails.

A sheet is the whole grid of its group in one image (no wrapping): the PNG is for sharing and
archiving; the HTML page is for browsing long axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .grid import Group, ReportGrid, format_value
from .images import ImageFiles

SHEETS = "sheets"  # sub-folder of the page's files folder
BACKGROUND, INK, MUTED = (255, 255, 255), (29, 29, 34), (107, 107, 118)
ERROR_FILL, ERROR_INK, EMPTY_FILL = (253, 236, 235), (138, 28, 19), (236, 236, 239)
FONT_SIZE, TITLE_SIZE = 13, 16
MAX_LABEL_LINES, MAX_TITLE_LINES = 4, 3


# A system font with wide coverage first (prompts are any language); Pillow's bundled font lacks
# even accented letters.
FONT_FILES = ("DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf")
_fonts: dict[int, ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.ImageFont:
    if size not in _fonts:
        for name in FONT_FILES:
            try:
                _fonts[size] = ImageFont.truetype(name, size)  # Pillow searches the system's font folders
                break
            except OSError:
                continue
        else:
            try:
                _fonts[size] = ImageFont.load_default(size=size)  # Pillow's bundled FreeType font
            except (TypeError, OSError, ImportError):  # Pillow without FreeType: a small bitmap font
                _fonts[size] = ImageFont.load_default()
    return _fonts[size]


def _line_height(font) -> int:
    top, bottom = font.getbbox("Hgjy")[1::2]
    return bottom - top + 4


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Words wrapped to ``width`` pixels; a word longer than a line is cut; '…' when cut short."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:  # hard-cut an overlong word
                cut = len(word)
                while cut > 1 and font.getlength(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


@dataclass(frozen=True)
class SheetGeometry:
    """Where everything goes on a sheet (pixels). Cells are ``cell`` large, ``gap`` apart."""

    cell: tuple[int, int]
    label_width: int  # the column of Y values, left of the cells
    title_height: int  # group heading
    header_height: int  # X values, above the cells
    gap: int = 4
    margin: int = 12
    min_width: int = 320  # room for the heading on a sheet of one small column

    def size(self, columns: int, rows: int) -> tuple[int, int]:
        width = max(self.min_width, 2 * self.margin + self.label_width + columns * (self.cell[0] + self.gap) + self.gap)
        height = 2 * self.margin + self.title_height + self.header_height + rows * (self.cell[1] + self.gap) + self.gap
        return width, height

    def cell_origin(self, xi: int, yi: int) -> tuple[int, int]:
        """Top-left pixel of cell (xi, yi)."""
        return (self.margin + self.label_width + xi * (self.cell[0] + self.gap) + self.gap,
                self.margin + self.title_height + self.header_height + yi * (self.cell[1] + self.gap) + self.gap)


def _title(grid: ReportGrid, group: Group) -> str:
    return " · ".join(f"{c}: {format_value(v)}" for c, v in zip(grid.choice.group, group.values))


def sheet_geometry(grid: ReportGrid, group: Group, box: tuple[int, int]) -> SheetGeometry:
    """Where a group's sheet puts things: labels sized to their longest wrapped value."""
    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
    line, title_line = _line_height(font), _line_height(title_font)
    label_width = max(box[0], 120) if grid.choice.y else 0
    x_lines = max((len(wrap(format_value(v), font, box[0], MAX_LABEL_LINES)) for v in group.x_values), default=1)
    header = (x_lines + 1) * line + 6 if grid.choice.x or grid.choice.y else 0
    base = SheetGeometry(box, label_width, 0, 0)
    width = base.size(len(group.x_values), 1)[0] - 2 * base.margin
    title = _title(grid, group)
    title_lines = len(wrap(title, title_font, width, MAX_TITLE_LINES)) if title else 0
    return SheetGeometry(box, label_width, title_lines * title_line + (8 if title_lines else 0), header)


def _text_block(draw, lines, font, x, y, width, align, fill) -> None:
    line = _line_height(font)
    for i, text in enumerate(lines):
        w = font.getlength(text)
        left = x + (width - w) / 2 if align == "center" else (x + width - w if align == "right" else x)
        draw.text((left, y + i * line), text, font=font, fill=fill)


def _paste_fit(sheet: Image.Image, path: Path, origin: tuple[int, int], box: tuple[int, int]) -> None:
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = min(box[0] / image.width, box[1] / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        sheet.paste(image, (origin[0] + (box[0] - size[0]) // 2, origin[1] + (box[1] - size[1]) // 2))


def draw_sheet(grid: ReportGrid, group: Group, images: dict[int, ImageFiles], page_dir: Path,
               box: tuple[int, int]) -> Image.Image:
    geometry = sheet_geometry(grid, group, box)
    font, title_font = _font(FONT_SIZE), _font(TITLE_SIZE)
    line = _line_height(font)
    sheet = Image.new("RGB", geometry.size(len(group.x_values), len(group.y_values)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    m, (cw, ch) = geometry.margin, geometry.cell
    title = _title(grid, group)
    if title:
        _text_block(draw, wrap(title, title_font, sheet.width - 2 * m, MAX_TITLE_LINES), title_font,
                    m, m, sheet.width - 2 * m, "left", INK)
    header_top = m + geometry.title_height
    names = [f"x: {grid.choice.x}" if grid.choice.x else "", f"y: {grid.choice.y}" if grid.choice.y else ""]
    _text_block(draw, [n for n in names if n], font, m, header_top, max(geometry.label_width - 6, 0) or 200,
                "right" if geometry.label_width else "left", MUTED)
    if grid.choice.x:
        for xi, value in enumerate(group.x_values):
            left = geometry.cell_origin(xi, 0)[0]
            lines = wrap(format_value(value), font, cw, MAX_LABEL_LINES)
            top = header_top + geometry.header_height - len(lines) * line - 2
            _text_block(draw, lines, font, left, top, cw, "center", INK)
    for yi, value in enumerate(group.y_values):
        top = geometry.cell_origin(0, yi)[1]
        if grid.choice.y:
            lines = wrap(format_value(value), font, geometry.label_width - 10, max(1, min(MAX_LABEL_LINES, ch // line)))
            _text_block(draw, lines, font, m, top + (ch - len(lines) * line) // 2, geometry.label_width - 8,
                        "right", INK)
        for xi in range(len(group.x_values)):
            origin = geometry.cell_origin(xi, yi)
            _draw_cell(sheet, draw, group.cells.get((xi, yi), []), images, page_dir, origin, geometry.cell, font)
    return sheet


def _draw_cell(sheet, draw, rows, images, page_dir, origin, box, font) -> None:
    x, y = origin
    rect = (x, y, x + box[0] - 1, y + box[1] - 1)
    if not rows:
        draw.rectangle(rect, fill=EMPTY_FILL)
        _text_block(draw, wrap("no image", font, box[0] - 8, 2), font, x + 4, y + 4, box[0] - 8, "left", MUTED)
        return
    row = rows[0]
    files = images.get(row["row_index"])
    if row.get("status") == "ok" and files and files.thumb:
        _paste_fit(sheet, page_dir / files.thumb, origin, box)
    else:
        draw.rectangle(rect, fill=ERROR_FILL)
        text = (f"error: {row.get('error') or ''}" if row.get("status") != "ok"
                else f"image unreadable: {(files and files.problem) or ''}")
        lines = wrap(text, font, box[0] - 8, max(1, (box[1] - 8) // _line_height(font)))
        _text_block(draw, lines, font, x + 4, y + 4, box[0] - 8, "left", ERROR_INK)
    if len(rows) > 1:
        label = f"+{len(rows) - 1}"
        w = font.getlength(label) + 8
        draw.rectangle((x + box[0] - w, y, x + box[0] - 1, y + _line_height(font)), fill=INK)
        draw.text((x + box[0] - w + 4, y), label, font=font, fill=BACKGROUND)


def write_sheets(grid: ReportGrid, images: dict[int, ImageFiles], page_dir: Path, files_dir: Path,
                 box: tuple[int, int]) -> dict[int, Path]:
    """One PNG per group in ``files_dir/sheets/``; group index -> path."""
    folder = files_dir / SHEETS
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, group in enumerate(grid.groups):
        path = folder / f"group-{index + 1:04d}.png"
        draw_sheet(grid, group, images, page_dir, box).save(path)
        written[index] = path
    return written
