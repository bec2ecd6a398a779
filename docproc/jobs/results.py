"""Result payloads: what a processed page and document look like on the wire."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Task = Literal["ocr", "tables", "extract"]
EngineName = Literal["auto", "text", "internvl", "openai"]


class ErrorInfo(BaseModel):
    code: str
    message: str


class ResultWarning(BaseModel):
    """Something the result should be read with in mind, though nothing failed: ``repaired``
    (a damaged PDF that MuPDF repaired when opening it; ``pages``: those that lost content)."""

    code: str
    message: str
    pages: list[int] | None = Field(None, description="The pages it concerns (document warnings).")


class Table(BaseModel):
    markdown: str = Field(description="The table as GitHub-flavoured Markdown.")
    rows: list[list[str | None]] = Field(description="Cells row by row; the first row is the header.")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="x0, y0, x1, y1 in PDF points, when known."
    )


class PageResult(BaseModel):
    page: int = Field(description="1-based page number in the source document.")
    status: Literal["succeeded", "failed"]
    engine: str
    width: int | None = Field(None, description="Rendered width in pixels.")
    height: int | None = Field(None, description="Rendered height in pixels.")
    tiles: int | None = Field(None, description="InternVL tiles fed to the model (0 for the text engine).")
    has_text_layer: bool = False
    text: str | None = Field(None, description="ocr: the page as Markdown, in reading order.")
    tables: list[Table] | None = Field(None, description="tables: every table found on the page.")
    fields: dict[str, Any] | None = Field(None, description="extract: the page's JSON fields.")
    headers: list[str] | None = Field(
        None, description="text engine: running headers and other lines at the top of the page, kept out of text."
    )
    footers: list[str] | None = Field(
        None, description="text engine: running footers and page numbers at the bottom, kept out of text."
    )
    margin: list[str] | None = Field(
        None, description="text engine: margin text (vertical stamps, side notes), kept out of text."
    )
    text_layer: str | None = Field(
        None, description="Why the page's text layer was not trusted (auto then sent it to the model); "
        "None when it was, or when there is none to judge (an image).",
    )
    raw_output: str | None = Field(None, description="The model's raw text, kept when it did not parse.")
    error: ErrorInfo | None = None
    warnings: list[ResultWarning] = Field(default_factory=list, description="e.g. repaired: part of the page's "
                                    "content was lost in a damaged file.")
    timings_ms: dict[str, float] = Field(default_factory=dict)


class DocumentInfo(BaseModel):
    filename: str | None = None
    sha256: str
    size_bytes: int
    media_type: str
    page_count: int


class DocumentResult(BaseModel):
    document: DocumentInfo
    task: Task
    schema_name: str | None = Field(None, alias="schema")
    schema_version: str | None = None
    engine: str
    model: str | None = None
    status: Literal["succeeded", "partial", "failed"]
    pages: list[PageResult]
    fields: dict[str, Any] | None = Field(None, description="extract: the merged document fields.")
    provenance: dict[str, list[int]] | None = Field(
        None, description="extract: for each top-level field, the pages it came from."
    )
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    warnings: list[ResultWarning] = Field(default_factory=list, description="e.g. repaired: the PDF was damaged "
                                    "and repaired when opened; its pages lists those that lost content.")

    model_config = {"populate_by_name": True}
