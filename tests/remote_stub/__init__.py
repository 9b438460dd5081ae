"""A stand-in remote-code checkpoint for the `infer` engine: `write_stub(folder)` copies the code
and config beside this file into `folder` and adds a small tokenizer and a safetensors weight, so
that the real `AutoModel.from_pretrained(..., trust_remote_code=True, use_safetensors=True)` path
loads it on a CPU, under transformers 5.x and 4.46.x alike."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent
CODE_FILES = ("configuration_stub.py", "modeling_stub.py")
WEIGHT = 2.0  # the stand-in reports the mean of its loaded weight: proof the file was read


def write_stub(folder: Path, generation: int = 1) -> Path:
    """Write the checkpoint; generation 2 names its model class like the DeepSeek-OCR-2 remote code."""
    import torch
    from safetensors.torch import save_file

    from dsocr_cli.tinymodel import build_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in CODE_FILES:
        shutil.copyfile(HERE / name, folder / name)
    config = json.loads((HERE / "config.json").read_text(encoding="utf-8"))
    if generation == 2:
        config["auto_map"]["AutoModel"] = "modeling_stub.StubOCR2Model"
        config["architectures"] = ["StubOCR2Model"]
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    build_tokenizer().save_pretrained(folder)
    weights = {"scale": torch.full((config["hidden_size"],), WEIGHT)}
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
