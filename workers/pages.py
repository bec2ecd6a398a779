"""A rendered page: the unit every stage after render works on."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from docproc.jobs.results import ResultWarning


@dataclass(frozen=True, slots=True)
class Word:
    """One word of a born-digital page's text layer; coordinates in PDF points."""

    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    block: int
    line: int
    number: int


@dataclass(slots=True)
class RenderedPage:
    number: int  # 1-based page number in the source document
    image: Image.Image | None  # RGB, rendered at the resolution the tile budget asks for; None: not
    # drawn (a page for the text engine needs no pixels, nor ``text`` and ``words``), see ``image_size``
    width_pt: float | None = None  # page size in PDF points (None for image inputs)
    height_pt: float | None = None
    dpi: float | None = None  # horizontal render resolution (None for image inputs)
    dpi_y: float | None = None  # vertical render resolution: differs from dpi by the tile grid's stretch
    grid: tuple[int, int] | None = None  # (cols, rows) when rendered straight at the tile grid, else None
    text: str = ""  # the text layer in reading order, "" when there is none
    words: list[Word] = field(default_factory=list)
    has_text_layer: bool = False  # True when `text` is usable in place of OCR
    text_layer_issue: str | None = None  # why it is not (workers/text_routing.py), for a PDF page
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[ResultWarning] = field(default_factory=list)  # e.g. repaired: content cut short
    undrawn_size: tuple[int, int] = (0, 0)  # the image's (width, height) when it was not drawn

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) in pixels of the page's image at its render resolution, drawn or not."""
        return self.image.size if self.image is not None else self.undrawn_size
