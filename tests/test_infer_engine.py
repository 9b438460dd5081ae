"""The remote-code engine on a stand-in checkpoint loaded through transformers' real
trust_remote_code path, on the CPU; `--engine auto`; the transformers-version checks.

Runs under both stacks: transformers 5.x (the native profile) and 4.46.3 (the remote profile).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import offline_env, run_dsocr
from dsocr_cli import grounding
from dsocr_cli.engines import infer, load_engine
from dsocr_cli.errors import ExitCode, SetupError, UsageError
from dsocr_cli.options import TASK_PROMPTS, EngineOptions
from dsocr_cli.types import PageImage, Source
from remote_stub import WEIGHT, write_stub

PROMPT = TASK_PROMPTS["markdown"]
OFFICIAL_V1 = {
    "model_type": "deepseek_vl_v2",
    "auto_map": {
        "AutoConfig": "modeling_deepseekocr.DeepseekOCRConfig",
        "AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM",
    },
}
OFFICIAL_V2 = {
    "model_type": "deepseek_vl_v2",
    "auto_map": {"AutoModel": "modeling_deepseekocr2.DeepseekOCR2ForCausalLM"},
}
NATIVE_READY = infer.native_stack_ok(infer.transformers_version())


def cli_has_trust_flag() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "dsocr_cli", "run", "--help"], capture_output=True, text=True, env=offline_env()
    ).stdout
    return "--trust-remote-code" in help_text


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Path:
    return write_stub(tmp_path_factory.mktemp("remote") / "dsocr_stub_v1")


@pytest.fixture(scope="module")
def engine(stub):
    return load_engine(EngineOptions(engine="infer", trust_remote_code=True, model=str(stub), device="cpu"))


def page(image: Image.Image, index: int = 0) -> PageImage:
    return PageImage(Source(Path("mem.png"), "image", f"p{index}"), index, image)


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def mean_of(image: Image.Image) -> str:
    return f"{np.asarray(image.convert('RGB'), dtype=np.float64).mean():.1f}"


def test_predicts_each_page_and_keeps_stdout_clean(engine, capfd):
    images = [Image.new("RGB", (300, 200), (10, 20, 30)), noise(1400, 1000, seed=3)]
    predictions = engine.predict([page(im, i) for i, im in enumerate(images)], PROMPT)
    assert capfd.readouterr().out == "", "the remote code's printing reached stdout"
    assert engine.name == "infer" and engine.batch_size == 1
    for image, prediction in zip(images, predictions, strict=True):
        width, height = image.size
        assert f"# Page {width}x{height}\n" in prediction.text
        # v1 checkpoint, default mode `tiled` -> v1's tiled preset gundam (1024 global, 640 tiles)
        assert f"mean={mean_of(image)} base=1024 image=640 crop=True weight={WEIGHT:g}" in prediction.text
        assert prediction.text.startswith("<|ref|>title<|/ref|><|det|>[[10, 10, 500, 60]]<|/det|>")
        assert "<｜end▁of▁sentence｜>" not in prediction.text
        assert prediction.finish == "eos"
        assert prediction.tokens == len(engine.tokenizer.encode(prediction.text, add_special_tokens=False))
        assert prediction.seconds > 0
        parsed = grounding.parse(prediction.text, width, height)
        assert [b.label for b in parsed.blocks] == ["title", "text"]
        assert parsed.blocks[0].boxes[0][2] == pytest.approx(500 / 999 * width, abs=1)


def test_pages_are_not_turned_twice(engine, tmp_path):
    # A page whose pixels still carry an EXIF rotation tag: dsocr's pixels go to the model as they are.
    raw = Image.new("RGB", (60, 20), (200, 0, 0))
    exif = raw.getexif()
    exif[0x0112] = 6
    raw.save(tmp_path / "tagged.jpg", exif=exif)
    with Image.open(tmp_path / "tagged.jpg") as tagged:
        (prediction,) = engine.predict([page(tagged)], PROMPT)
    assert "# Page 60x20\n" in prediction.text


def test_max_new_tokens_caps_the_remote_generation(stub):
    short = load_engine(
        EngineOptions(engine="infer", trust_remote_code=True, model=str(stub), device="cpu", max_new_tokens=6)
    )
    (prediction,) = short.predict([page(Image.new("L", (50, 40), 128))], PROMPT)
    assert (prediction.tokens, prediction.finish) == (6, "length")
    assert "# Page" not in prediction.text


def test_modes_follow_the_checkpoint_generation(stub, tmp_path):
    small = load_engine(
        EngineOptions(engine="infer", trust_remote_code=True, model=str(stub), device="cpu", mode="small")
    )
    (prediction,) = small.predict([page(Image.new("RGB", (64, 64)))], PROMPT)
    assert "base=640 image=640 crop=False" in prediction.text
    v2 = write_stub(tmp_path / "dsocr_stub_v2", generation=2)
    engine2 = load_engine(EngineOptions(engine="infer", trust_remote_code=True, model=str(v2), device="cpu"))
    (prediction,) = engine2.predict([page(Image.new("RGB", (64, 64)))], PROMPT)
    assert "base=1024 image=768 crop=True" in prediction.text
    with pytest.raises(UsageError, match="v1"):
        load_engine(EngineOptions(engine="infer", trust_remote_code=True, model=str(v2), device="cpu", mode="gundam"))
    assert infer.remote_generation(OFFICIAL_V2) == 2 and infer.remote_generation(OFFICIAL_V1) == 1
    assert [infer.remote_mode("tiny", 1).base_size, infer.remote_mode("large", 1).image_size] == [512, 1280]
    assert infer.remote_mode("base", 2) == infer.Mode("base", 1024, 1024, False)


def test_refuses_without_trust_remote_code(stub):
    with pytest.raises(SetupError) as caught:
        load_engine(EngineOptions(engine="infer", model=str(stub), device="cpu"))
    line = caught.value.one_line()
    assert "--trust-remote-code" in line and "--revision" in line and "\n" not in line
    assert caught.value.exit_code == ExitCode.SETUP


def test_needs_cuda_unless_told_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for device in ("auto", "cuda"):
        options = EngineOptions(engine="infer", trust_remote_code=True, model="/nonexistent/model", device=device)
        with pytest.raises(SetupError) as caught:  # before any file of the model is looked at
            load_engine(options)
        assert caught.value.message == "--engine infer needs a CUDA GPU: the official remote code hard-codes .cuda()"


def test_cpu_run_warns(stub, caplog):
    load_engine(EngineOptions(engine="infer", trust_remote_code=True, model=str(stub), device="cpu"))
    assert any("hard-codes .cuda()" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_cuda_only_remote_code_on_cpu_is_a_setup_error(engine):
    class CudaOnly:  # what the official code does on a CPU-only torch
        def infer(self, tokenizer, **kwargs):
            raise AssertionError("Torch not compiled with CUDA enabled")

    cpu_engine = infer.InferEngine(CudaOnly(), engine.tokenizer, engine.options, "cpu", None, engine.mode)
    with pytest.raises(SetupError, match="needs CUDA: Torch not compiled with CUDA enabled"):
        cpu_engine.predict([page(Image.new("RGB", (8, 8)))], PROMPT)


def test_finish_is_guessed_when_generate_is_not_seen(engine):
    class TextOnly:  # remote code that answers without calling self.generate
        def __init__(self, text):
            self.text = text

        def infer(self, tokenizer, **kwargs):
            return self.text

    def predict(text):
        fake = infer.InferEngine(TextOnly(text), engine.tokenizer, engine.options, "cpu", None, engine.mode)
        return fake.predict([page(Image.new("RGB", (8, 8)))], PROMPT)[0]

    short = predict("# Title")
    assert (short.finish, short.tokens) == ("eos", len(engine.tokenizer.encode("# Title", add_special_tokens=False)))
    assert predict("0123456789 " * 3000).finish == "length"  # near the remote code's own 8192 limit


def test_check_stack_names_the_fix():
    with pytest.raises(SetupError) as caught:
        infer.check_stack("deepseek_vl_v2", version="5.24.0")
    assert "4.46" in caught.value.message and "LlamaFlashAttention2" in caught.value.message
    assert "transformers==4.46.3 tokenizers==0.20.3" in caught.value.hint
    assert "scripts/install.sh --profile remote" in caught.value.hint
    with pytest.raises(SetupError, match="5.10.1") as caught:
        infer.check_stack("deepseek_ocr2", version="4.46.3")
    assert "pip install -U 'transformers>=5.10.1'" in caught.value.hint
    with pytest.raises(SetupError, match="4.46"):
        infer.check_stack(OFFICIAL_V1, version="4.48.0")
    infer.check_stack(OFFICIAL_V1, version="4.46.3")
    infer.check_stack(OFFICIAL_V2, version="4.47.1")
    infer.check_stack("deepseek_ocr2", version="5.10.1")
    stub_config = json.loads((Path(__file__).parent / "remote_stub" / "config.json").read_text())
    for version in ("4.46.3", "5.24.0"):  # remote code that is not the official one states no pin
        infer.check_stack(stub_config, version=version)


@pytest.mark.skipif(not NATIVE_READY, reason="the tiny native model needs transformers >= 5.10.1")
def test_choose_engine_on_the_tiny_native_model(tiny_model):
    assert infer.choose_engine(str(tiny_model), trust_remote_code=False) == "hf"


def test_choose_engine(stub, tmp_path):
    assert infer.choose_engine(str(stub), trust_remote_code=True) == "infer"
    with pytest.raises(SetupError, match="auto_map") as caught:
        infer.choose_engine(str(stub), trust_remote_code=False)
    assert "--trust-remote-code" in caught.value.hint
    native = tmp_path / "native"
    native.mkdir()
    (native / "config.json").write_text(json.dumps({"model_type": "deepseek_ocr2"}))
    if NATIVE_READY:
        assert infer.choose_engine(str(native), trust_remote_code=True) == "hf"
    else:
        with pytest.raises(SetupError) as caught:
            infer.choose_engine(str(native), trust_remote_code=True)
        assert "pip install -U 'transformers>=5.10.1'" in caught.value.hint
    (native / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SetupError, match="'llama'"):
        infer.choose_engine(str(native), trust_remote_code=True)


def test_auto_engine_resolves_then_loads(stub):
    loaded = load_engine(EngineOptions(engine="auto", trust_remote_code=True, model=str(stub), device="cpu"))
    assert loaded.name == "infer"


@pytest.mark.skipif(not cli_has_trust_flag(), reason="the CLI has no --trust-remote-code flag yet")
def test_cli_end_to_end(stub, tmp_path):
    Image.new("RGB", (320, 240), (250, 250, 250)).save(tmp_path / "img.png")
    out = tmp_path / "out"
    env = offline_env(HF_MODULES_CACHE=str(tmp_path / "modules"))
    args = ["run", "img.png", "-o", str(out), "--engine", "infer", "--trust-remote-code", "--model", str(stub)]
    result = run_dsocr(*args, "--device", "cpu", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    record = json.loads((out / "img.png" / "document.json").read_text(encoding="utf-8"))
    assert record["page_count"] == 1
