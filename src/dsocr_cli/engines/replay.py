"""The replay engine: answers with the raw model output an earlier run wrote, so grounding and
writers can be rerun with new flags (--searchable-pdf, --layout-pdf, --figure-dpi) without the
model, and tests can feed realistic grounding output through the real command.

`--engine replay --model OLD_OUT` looks up OLD_OUT/<key>/pages/NNNN.raw.md for each page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from dsocr_cli.errors import SetupError
from dsocr_cli.options import EngineOptions
from dsocr_cli.types import PageImage, Prediction


class ReplayEngine:
    """Each page's recorded raw output, with its recorded tokens and finish, in no time."""

    name = "replay"
    device = "cpu"

    def __init__(self, folder: Path, batch_size: int):
        self.folder = folder
        self.batch_size = batch_size

    def predict(self, pages: Sequence[PageImage], prompt: str, strict: bool = False) -> list[Prediction]:
        """A page with no recorded output raises, which fails its document alone; `strict` changes nothing."""
        return [self._one(page) for page in pages]

    def _one(self, page: PageImage) -> Prediction:
        document = self.folder.joinpath(*page.source.key.split("/"))
        raw = document / "pages" / f"{page.number:04d}.raw.md"
        if not raw.is_file():
            raise FileNotFoundError(f"no recorded output {raw}")
        text = raw.read_text(encoding="utf-8")
        record = self._page_record(document, page.number)
        tokens = record.get("tokens", len(text.split()))
        return Prediction(text=text, tokens=tokens, finish=record.get("finish", "eos"), seconds=0.0)

    @staticmethod
    def _page_record(document: Path, number: int) -> dict:
        try:
            pages = json.loads((document / "document.json").read_text(encoding="utf-8"))["pages"]
        except (OSError, ValueError, KeyError):
            return {}
        return next((p for p in pages if p.get("number") == number), {})


def load(options: EngineOptions) -> ReplayEngine:
    """The `--engine replay` factory: --model names the earlier output folder."""
    folder = Path(options.model).expanduser()
    if not folder.is_dir():
        raise SetupError(f"--engine replay: {options.model} is not a folder", "pass an earlier -o folder as --model")
    return ReplayEngine(folder, options.batch_size or 16)
