"""Typed, frozen options, narrowed per stage: the CLI builds them, stages read only their part."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dsocr_cli.errors import UsageError

DEFAULT_MODEL = "deepseek-community/DeepSeek-OCR-2"

# The model card's prompts (DEEPSEEK_OCR.md). `<image>` marks where the vision tokens go.
TASK_PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown. ",
    "ocr": "<image>\n<|grounding|>OCR this image. ",
    "free": "<image>\nFree OCR. ",
    "figure": "<image>\nParse the figure. ",
    "describe": "<image>\nDescribe this image in detail. ",
}


@dataclass(frozen=True)
class Mode:
    """A resolution preset: global view size, tile size and whether pages are tiled.

    `base_size`/`image_size`/`crop_mode` are the remote code's names; the native processor
    takes the same facts as size / tile_size / crop_to_patches.
    """

    name: str
    base_size: int
    image_size: int
    crop_mode: bool


MODES = {
    m.name: m
    for m in (
        Mode("tiny", 512, 512, False),
        Mode("small", 640, 640, False),
        Mode("base", 1024, 1024, False),
        Mode("large", 1280, 1280, False),
        Mode("gundam", 1024, 640, True),
        Mode("tiled", 1024, 768, True),
    )
}
DEFAULT_MODE = "tiled"


def parse_pages(spec: str | None) -> tuple[tuple[int, int | None], ...] | None:
    """`1-3,7,10-` -> ((1, 3), (7, 7), (10, None)); 1-based, inclusive."""
    if spec is None or not spec.strip():
        return None
    ranges = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                start, end = int(lo or 1), (int(hi) if hi.strip() else None)
            else:
                start = end = int(part)
        except ValueError:
            raise UsageError(f"invalid page range {part!r} in --pages {spec!r}", "use e.g. 1-3,7,10-") from None
        if start < 1 or (end is not None and end < start):
            raise UsageError(f"invalid page range {part!r} in --pages {spec!r}", "pages are 1-based, low-high")
        ranges.append((start, end))
    return tuple(ranges)


@dataclass(frozen=True)
class RenderOptions:
    """How inputs become page images (DPI, page ranges, password, limits): the render stage's part."""

    dpi: float = 144.0
    pages: tuple[tuple[int, int | None], ...] | None = None
    password: str | None = None
    max_pixels: int = 40_000_000  # a page larger than this at the asked DPI is rendered smaller
    timeout: float = 120.0  # seconds a page may take to render before its document fails
    workers: int | None = None  # render processes, one document each; None: from the cores (schedule.default_workers)

    def wants(self, number: int) -> bool:
        """Whether 1-based page `number` is asked for; every page is when --pages was not given."""
        if self.pages is None:
            return True
        return any(lo <= number and (hi is None or number <= hi) for lo, hi in self.pages)


@dataclass(frozen=True)
class EngineOptions:
    """What loads the model and how it decodes; the fields that change the output are recorded by
    `settings_record`, so a rerun with other values redoes the documents."""

    engine: str = "hf"
    model: str = DEFAULT_MODEL
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    mode: str = DEFAULT_MODE
    max_new_tokens: int = 8192
    batch_size: int | None = None
    trust_remote_code: bool = False
    no_repeat_ngram: int = 30
    no_repeat_window: int = 90
    decoder: str = "slots"  # slots: continuous batching; generate: transformers' generate per batch
    retry_unfinished: bool = True  # retry once, strictly, a page that looped or hit the token limit
    workers: int | None = None  # engine processes on this host; None: one per visible GPU (one without)
    ray: str | None = None  # a Ray cluster address: workers are Ray actors there


@dataclass(frozen=True)
class TaskOptions:
    """What the model is asked: a preset task, or a custom prompt that overrides it."""

    name: str = "markdown"
    prompt: str | None = None

    @property
    def text(self) -> str:
        """The prompt sent to the model; a custom one gets `<image>` in front when it lacks it."""
        if self.prompt is None:
            return TASK_PROMPTS[self.name]
        return self.prompt if "<image>" in self.prompt else "<image>\n" + self.prompt


@dataclass(frozen=True)
class OutputOptions:
    """Where and which files are written; with `out` None, markdown goes to stdout instead of a tree."""

    out: Path | None = None  # None: markdown to stdout
    force: bool = False  # redo documents already done with the same input and settings
    wait: bool = False  # queue behind another run holding OUT instead of exiting
    searchable_pdf: bool = False  # OUT/<key>/searchable.pdf: the input with an invisible text layer
    layout_pdf: bool = False  # OUT/<key>/layout.pdf: the annotated pages in one PDF
    figure_dpi: float = 300.0  # PDF figures are re-rendered at this DPI for their crops
    report: bool = True  # OUT/report.html and each document's page view (with plain page images)

    @property
    def to_stdout(self) -> bool:
        """No -o (or -o -): markdown on stdout, so --json and the flags that write files are refused."""
        return self.out is None


@dataclass(frozen=True)
class Options:
    """Every stage's options in one value, built once by the CLI; stages read only their part."""

    render: RenderOptions = field(default_factory=RenderOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    task: TaskOptions = field(default_factory=TaskOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


def with_engine(options: Options, name: str) -> Options:
    """The options with `--engine auto` replaced by the engine it resolved to: records then say what
    ran, and a rerun compares like with like (auto -> hf finds documents done by hf, and the reverse)."""
    return replace(options, engine=replace(options.engine, engine=name))


def settings_record(options: Options) -> dict:
    """What decides a document's output: recorded in its JSON, compared on resume."""
    e, r = options.engine, options.render
    return {
        "engine": e.engine,
        "model": e.model,
        "revision": e.revision,
        "mode": e.mode,
        "task": options.task.name,
        "prompt": options.task.text,
        "dpi": r.dpi,
        "pages": None if r.pages is None else [list(p) for p in r.pages],
        "max_new_tokens": e.max_new_tokens,
        "no_repeat_ngram": [e.no_repeat_ngram, e.no_repeat_window],
        "outputs": {
            "searchable_pdf": options.output.searchable_pdf,
            "layout_pdf": options.output.layout_pdf,
            "figure_dpi": options.output.figure_dpi,
        },
    }
