"""Prompts for InternVL: one chat per request, rendered with the model's own chat template.

Two steps, both plain functions:

1. :func:`build_prompt` -> chat messages: the InternVL system message (the original
   ``internvl2_5`` template had it; the ``-hf`` template has none, so it is added here
   for parity with the model cards), then one user turn holding the image item(s)
   and the task's instruction. Several images (pages of one document) are labelled
   ``Image-1: <image>``, ``Image-2: <image>`` ... as in the model cards.
2. :func:`render_prompt` -> the prompt string: ``tokenizer.apply_chat_template`` with
   the generation prompt, then every image placeholder the template wrote expanded
   to ``<img>`` + ``<IMG_CONTEXT>`` x (image_seq_length x tiles) + ``</img>``, so the
   model finds exactly one image token per vision feature. Token strings come from
   the tokenizer, never hard-coded ids.

Text that comes from a document (the text-layer hint) is scrubbed of the model's
control tokens (``<IMG_CONTEXT>``, ``<|im_end|>`` ...) so a page cannot forge image
slots or end its own turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from docproc.jobs.results import Task
    from docproc.jobs.schemas import ExtractionSchema

TASKS = ("ocr", "tables", "extract")

# The system message of InternVL's original conversation template (internvl2_5),
# which InternVL2.5 / InternVL3 were trained with.
INTERNVL_SYSTEM_MESSAGE = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
)

# The chat template of the converted InternVL "-hf" checkpoints: ChatML roles, one
# `<IMG_CONTEXT>\n` per image item, no default system prompt. Used when a checkpoint
# ships no template of its own, and by the tiny test checkpoint.
INTERNVL_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\\n' }}"
    "{% endif %}"
)

OCR_INSTRUCTION = (
    "Transcribe all the text on this page in natural reading order, as Markdown.\n"
    "- Keep headings (#), paragraphs, lists and line breaks that carry meaning.\n"
    "- Write tables as Markdown tables.\n"
    "- Copy text exactly as printed, including numbers, dates and punctuation; do not translate, "
    "summarise or correct it.\n"
    "- Skip purely decorative elements.\n"
    "Answer with the transcription only."
)

TABLES_INSTRUCTION = (
    "Find every table on this page and write each one as a GitHub-flavoured Markdown table: "
    "a header row, a separator row (| --- |), then one row per table row.\n"
    "- Keep the column order and copy every cell exactly as printed; leave an empty cell empty.\n"
    "- A table with merged cells may be written as an HTML <table> instead.\n"
    "- Separate tables with one blank line, in reading order.\n"
    "Answer with the tables only. If the page has no table, answer: NO TABLES"
)

EXTRACT_INSTRUCTION = (
    "Extract the fields of this {what} as one JSON object.\n"
    "\n"
    "Fields (path (type): meaning):\n"
    "{fields}\n"
    "\n"
    "Rules:\n"
    "{rules}\n"
    "\n"
    "The JSON object must match this JSON Schema:\n"
    "{schema}\n"
    "\n"
    "Answer with the JSON object only."
)

GENERAL_EXTRACT_RULES = (
    "Copy values exactly as printed; never invent a value.",
    "Use null for a field that is not shown; never guess.",
)

MULTI_PAGE_NOTE = "The images are the pages of one document, in order."

TEXT_HINT_INTRO = (
    "The page also has an embedded text layer (it may be incomplete or out of order; "
    "trust the image where they differ):"
)
TRUNCATION_MARK = "[... text layer truncated]"

# Control tokens a document's text must not smuggle into the prompt.
_CONTROL_TOKEN_RE = re.compile(
    r"<\|[A-Za-z0-9_]+\|>|</?img>|<IMG_CONTEXT>|<image>|<video>|</?(?:quad|ref|box)>"
)


def scrub_control_tokens(text: str) -> str:
    """``text`` without the chat / image control tokens (``<|im_end|>``, ``<IMG_CONTEXT>`` ...)."""
    return _CONTROL_TOKEN_RE.sub("", text)


def truncate_hint(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters at a line (else word) boundary, marked."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    if max_chars <= len(TRUNCATION_MARK) + 1:
        return ""
    room = max_chars - len(TRUNCATION_MARK) - 1
    cut = text[:room]
    for sep in ("\n", " "):
        at = cut.rfind(sep)
        if at > room // 2:
            cut = cut[:at]
            break
    return cut.rstrip() + "\n" + TRUNCATION_MARK


def _hints(schema: "ExtractionSchema") -> list[str]:
    hints = schema.prompt_hints
    if isinstance(hints, str):
        hints = [hints]
    return [h.strip() for h in hints if h and h.strip()]


def task_instruction(task: "Task", schema: "ExtractionSchema | None" = None) -> str:
    """The instruction text of ``task`` (``extract`` needs ``schema``)."""
    if task == "ocr":
        return OCR_INSTRUCTION
    if task == "tables":
        return TABLES_INSTRUCTION
    if task == "extract":
        if schema is None:
            raise ValueError("the extract task needs a schema")
        what = schema.title if not schema.description else f"{schema.title} ({schema.description.rstrip('.')})"
        rules = [*GENERAL_EXTRACT_RULES, *_hints(schema)]
        return EXTRACT_INSTRUCTION.format(
            what=what,
            fields=schema.field_guide(),
            rules="\n".join(f"- {r}" for r in rules),
            schema=schema.model_schema_json(),
        )
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def build_prompt(
    task: "Task",
    *,
    tiles_per_image: Sequence[int],
    schema: "ExtractionSchema | None" = None,
    text_hint: str | None = None,
    text_hint_max_chars: int = 4000,
    system_message: str | None = INTERNVL_SYSTEM_MESSAGE,
) -> list[dict[str, Any]]:
    """Chat messages for one request: system message, then a user turn with the image(s) and the task.

    One image item per entry of ``tiles_per_image`` (its tile count is used by
    :func:`render_prompt`). ``text_hint`` (a page's text layer), when given and not
    blank, is scrubbed of control tokens, truncated to ``text_hint_max_chars`` and
    appended after the instruction.
    """
    if not tiles_per_image:
        raise ValueError("a request needs at least one image")
    if any(int(n) < 1 for n in tiles_per_image):
        raise ValueError(f"every image needs at least one tile, got {list(tiles_per_image)}")
    content: list[dict[str, Any]] = []
    if len(tiles_per_image) == 1:
        content.append({"type": "image"})
    else:
        for i in range(len(tiles_per_image)):
            content.append({"type": "text", "text": f"Image-{i + 1}: "})
            content.append({"type": "image"})
    text = task_instruction(task, schema)
    if len(tiles_per_image) > 1:
        text = f"{MULTI_PAGE_NOTE}\n{text}"
    hint = truncate_hint(scrub_control_tokens(text_hint), text_hint_max_chars) if text_hint else ""
    if hint:
        text = f"{text}\n\n{TEXT_HINT_INTRO}\n<<<\n{hint}\n>>>"
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = []
    if system_message:
        messages.append({"role": "system", "content": system_message})
    messages.append({"role": "user", "content": content})
    return messages


def image_tokens(tokenizer: "PreTrainedTokenizerBase") -> tuple[str, str, str]:
    """(start, context, end) image token strings of ``tokenizer``: ``<img>``, ``<IMG_CONTEXT>``, ``</img>``."""
    start = getattr(tokenizer, "start_image_token", None) or "<img>"
    context = getattr(tokenizer, "context_image_token", None) or "<IMG_CONTEXT>"
    end = getattr(tokenizer, "end_image_token", None) or "</img>"
    vocab = tokenizer.get_vocab()
    missing = [t for t in (start, context, end) if t not in vocab]
    if missing:
        raise ValueError(f"the tokenizer has no image token(s) {missing}; not an InternVL tokenizer")
    return start, context, end


def render_prompt(
    tokenizer: "PreTrainedTokenizerBase",
    messages: list[dict[str, Any]],
    image_seq_length: int,
    tiles_per_image: Sequence[int],
    *,
    tokens: tuple[str, str, str] | None = None,
) -> str:
    """The prompt text: the chat template applied (with the generation prompt), and the
    i-th image placeholder expanded to ``image_seq_length * tiles_per_image[i]`` image tokens.

    The ``-hf`` templates write ``<IMG_CONTEXT>`` per image item (older conversions
    ``<image>``); either is accepted, and the count must equal ``len(tiles_per_image)``.
    ``tokens``: :func:`image_tokens` of ``tokenizer`` when the caller already has them
    (looking them up reads the whole vocabulary).
    """
    start, context, end = tokens or image_tokens(tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some tokenizers return a list for a single chat
        text = text[0]
    for placeholder in (context, "<image>"):
        parts = text.split(placeholder)
        if len(parts) - 1 == len(tiles_per_image):
            break
    else:
        raise ValueError(
            f"the chat template wrote {text.count(context)} image placeholder(s) for "
            f"{len(tiles_per_image)} image(s)"
        )
    out = [parts[0]]
    for n_tiles, rest in zip(tiles_per_image, parts[1:]):
        out.append(start + context * (image_seq_length * int(n_tiles)) + end)
        out.append(rest)
    return "".join(out)
