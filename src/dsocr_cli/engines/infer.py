"""The remote-code engine: official DeepSeek-OCR checkpoints (v1 deepseek-ai/DeepSeek-OCR, v2
deepseek-ai/DeepSeek-OCR-2, or local copies) run through their own `model.infer`, one page at a time.

That code is not ours and has sharp edges (DEEPSEEK_OCR.md): it runs only with `trust_remote_code`,
needs transformers 4.46.x, hard-codes `.cuda()`, takes an image path, prints to stdout, always
creates `output_path/images`, returns text only with `eval_mode=True`, and with `save_results=True`
evaluates model output with eval(). So this engine refuses without --trust-remote-code, checks the
stack and the GPU before any weight is read, writes each page to a temporary PNG, never passes
save_results=True, and keeps the printing off dsocr's stdout.

`infer()` reports no finish reason and takes no token limit (it hard-codes 8192 new tokens). The
engine wraps the loaded model's own `generate` to lower that limit to --max-new-tokens and to see
the generated ids: finish is then exact ("eos" when EOS was generated). Where the remote code never
calls `self.generate`, finish falls back to a heuristic on the re-encoded text (see `_guess_finish`).

This module also resolves `--engine auto` (`choose_engine`) and checks which transformers the chosen
engine needs (`check_stack`); its top level imports nothing heavy, so `dsocr doctor` can use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

from dsocr_cli.engines.device import device_stats
from dsocr_cli.errors import SetupError, UsageError
from dsocr_cli.options import MODES, EngineOptions, Mode
from dsocr_cli.types import PageImage, Prediction

log = logging.getLogger(__name__)

NATIVE_MIN = (5, 10, 1)  # models/deepseek_ocr2 first shipped in transformers 5.10.1
REMOTE_RANGE = ((4, 46), (4, 48))  # the official remote code imports LlamaFlashAttention2, gone in 4.48
NATIVE_FIX = "pip install -U 'transformers>=5.10.1'"
REMOTE_FIX = (
    "install the remote-code stack (transformers==4.46.3, tokenizers==0.20.3) in its own environment: "
    "scripts/install.sh --profile remote, or pip install transformers==4.46.3 tokenizers==0.20.3 "
    "einops addict easydict torchvision"
)
OFFICIAL_MODULES = ("modeling_deepseekocr", "modeling_deepseekocr2")  # the auto_map modules upstream ships
REMOTE_MODEL_TYPES = ("deepseek_vl_v2",)  # model_type of the official remote-code configs
REMOTE_MAX_NEW_TOKENS = 8192  # hard-coded in the official infer()
V1_TILED = "gundam"  # v1's tiled preset stands in for the default `tiled` (whose 768 tiles are v2's)
V2_MODES = {"tiled": MODES["tiled"], "base": Mode("base", 1024, 1024, False)}
CUDA_HINT = "run it on a machine with an NVIDIA GPU, or use --engine hf (native DeepSeek-OCR-2), which runs on CPU too"


# --- which stack and which engine --------------------------------------------------------------


def transformers_version() -> str | None:
    """Read from package metadata, without importing transformers: doctor and the stack checks stay fast."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def version_tuple(version: str | None) -> tuple[int, ...]:
    """'4.46.3' -> (4, 46, 3); '5.0.0rc1' -> (5, 0, 0); None or garbage -> ()."""
    parts = []
    for piece in (version or "").split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def native_stack_ok(version: str | None) -> bool:
    """Whether this transformers has the native deepseek_ocr2 model (>= 5.10.1)."""
    return version_tuple(version) >= NATIVE_MIN


def remote_stack_ok(version: str | None) -> bool:
    """Whether this transformers runs the official remote code: 4.46 or 4.47 (4.48 removed
    LlamaFlashAttention2, which it imports)."""
    low, high = REMOTE_RANGE
    return low <= version_tuple(version)[:2] < high


def check_stack(config_or_model_type, version: str | None = None) -> None:
    """Raise a SetupError naming the fix when the installed transformers cannot run this checkpoint.

    Takes a model_type string, a config.json dict or a config object. Native DeepSeek-OCR-2
    (model_type deepseek_ocr2, no auto_map) needs transformers >= 5.10.1. The official remote code
    (auto_map into modeling_deepseekocr*, or a bare "deepseek_vl_v2") needs 4.46.x. Other remote
    code (forks, the test stand-in) states no pin here: it is loaded and fails on its own terms.
    `version` is the transformers version to judge (default: the installed one).
    """
    model_type, auto_map = _describe(config_or_model_type)
    version = version or transformers_version()
    if auto_map:
        official = _official_remote_code(auto_map)
    else:
        official = model_type in REMOTE_MODEL_TYPES
        if model_type == "deepseek_ocr2" and not native_stack_ok(version):
            raise SetupError(
                f"the native DeepSeek-OCR-2 engine needs transformers >= 5.10.1, but {_installed(version)}",
                f"{NATIVE_FIX} (keep the remote-code profile's transformers 4.46.3 in a separate environment)",
            )
    if official and not remote_stack_ok(version):
        raise SetupError(
            "the official DeepSeek-OCR remote code needs transformers 4.46.x (it imports LlamaFlashAttention2, "
            f"removed in 4.48), but {_installed(version)}",
            f"{REMOTE_FIX}; or use --engine hf with deepseek-community/DeepSeek-OCR-2",
        )


def choose_engine(model: str, trust_remote_code: bool, revision: str | None = None) -> str:
    """`--engine auto`: read the checkpoint's config.json (local folder or hub cache) and pick.

    model_type deepseek_ocr2 with transformers >= 5.10.1 -> "hf"; a checkpoint with an auto_map
    (remote code) and --trust-remote-code -> "infer"; anything else -> a SetupError that explains.
    """
    config = read_config(model, revision)
    model_type, auto_map = _describe(config)
    if model_type == "deepseek_ocr2" and native_stack_ok(transformers_version()):
        return "hf"
    if auto_map:
        if not trust_remote_code:
            raise SetupError(
                f"{model} runs through the Python code it ships (its config.json has an auto_map)",
                "pass --trust-remote-code to run it with --engine infer (and --revision COMMIT to pin the code "
                "you trust), or use the native deepseek-community/DeepSeek-OCR-2",
            )
        return "infer"
    if model_type == "deepseek_ocr2":
        check_stack(model_type)  # raises: transformers too old for the native engine
    raise SetupError(
        f"--engine auto cannot run {model}: its config.json has model_type {model_type!r} and no remote code",
        "give a native DeepSeek-OCR-2 checkpoint (model_type deepseek_ocr2) or a remote-code DeepSeek-OCR one",
    )


def read_config(model: str, revision: str | None = None) -> dict:
    """config.json of a local checkpoint folder or a hub id (from the cache, else downloaded)."""
    from dsocr_cli.engines.hf import _check_model_path

    source = _check_model_path(model)
    path = Path(source) / "config.json"
    if not path.is_file():
        path = _hub_config(model, revision)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SetupError(f"cannot read {path}: {exc}", "the checkpoint's config.json must be JSON") from exc
    if not isinstance(config, dict):
        raise SetupError(f"{path} is not a JSON object", "the checkpoint's config.json must be a JSON object")
    return config


def load_auto(options: EngineOptions):
    """The `auto` factory: resolve the engine from the checkpoint, then load that engine."""
    from dsocr_cli.engines import load_engine

    name = choose_engine(options.model, options.trust_remote_code, options.revision)
    log.info("--engine auto: %s for %s", name, options.model)
    return load_engine(dataclasses.replace(options, engine=name))


def _hub_config(model: str, revision: str | None) -> Path:
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(hf_hub_download(model, "config.json", revision=revision))
    except Exception as exc:  # offline and not cached, unknown repo, gated, network down
        raise SetupError(
            f"cannot read config.json of {model}: {_first_line(exc)}",
            f"it must be reachable on the Hugging Face hub or cached in {constants.HF_HUB_CACHE}; "
            "without network, pass --model with a local folder",
        ) from exc


def _describe(config) -> tuple[str | None, dict | None]:
    if isinstance(config, str):
        return config, None
    if isinstance(config, dict):
        return config.get("model_type"), config.get("auto_map") or None
    return getattr(config, "model_type", None), getattr(config, "auto_map", None) or None


def _official_remote_code(auto_map: dict) -> bool:
    for value in auto_map.values():
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            module = str(ref or "").split("--")[-1].rsplit(".", 1)[0]
            if module in OFFICIAL_MODULES:
                return True
    return False


def _installed(version: str | None) -> str:
    return f"transformers {version} is installed" if version else "transformers is not installed"


# --- modes ---------------------------------------------------------------------------------------


def remote_generation(config: dict) -> int:
    """2 for DeepSeek-OCR-2 remote code (its AutoModel class is DeepseekOCR2...), else 1."""
    _, auto_map = _describe(config)
    target = str((auto_map or {}).get("AutoModel", ""))
    return 2 if "ocr2" in target.lower() else 1


def remote_mode(name: str, generation: int) -> Mode:
    """The infer() sizes for a --mode: v1 has its five presets, v2 its tiled mode and the global view."""
    if generation == 2:
        if name not in V2_MODES:
            raise UsageError(f"--mode {name} is a DeepSeek-OCR (v1) preset", "DeepSeek-OCR-2 supports tiled, base")
        return V2_MODES[name]
    if name == "tiled":
        log.info("--mode tiled on a DeepSeek-OCR (v1) checkpoint: using its tiled preset, gundam")
        return MODES[V1_TILED]
    if name not in MODES:
        raise UsageError(f"unknown mode {name!r}", f"choose one of: {', '.join(MODES)}")
    return MODES[name]


# --- the engine ----------------------------------------------------------------------------------


class InferEngine:
    """One page per call of the remote code's `infer`; its printing is kept off stdout."""

    name = "infer"
    batch_size = 1

    def __init__(self, model, tokenizer, options: EngineOptions, device: str, dtype, mode: Mode):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options
        self.device = device
        self.dtype = dtype
        self.mode = mode
        self.eos_id = tokenizer.eos_token_id
        self.strip_tokens = [t for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) if t]
        self.limit = min(options.max_new_tokens, REMOTE_MAX_NEW_TOKENS)
        self._generate_called = False  # did infer() go through the wrapped generate (so the cap held)?
        self._generated: list[int] | None = None
        _watch_generate(model, options.max_new_tokens, self._record)

    def predict(self, pages: Sequence[PageImage], prompt: str, strict: bool = False) -> list[Prediction]:
        """One `infer` call per page; `strict` changes nothing, the remote code has no repetition control."""
        return [self._predict_page(page, prompt) for page in pages]

    def stats(self) -> dict:
        """Device, dtype and memory, for summary.json."""
        return device_stats(self.name, self.device, self.dtype)

    def _predict_page(self, page: PageImage, prompt: str) -> Prediction:
        with tempfile.TemporaryDirectory(prefix="dsocr-infer-") as tmp:
            image_file = Path(tmp) / "page.png"
            save_png(page.image, image_file)
            self._generate_called, self._generated = False, None
            printed = io.StringIO()
            started = time.perf_counter()
            with quiet_stdout(printed):
                text = self._infer(str(image_file), str(Path(tmp) / "out"), prompt)
            seconds = time.perf_counter() - started
        if printed.getvalue().strip():
            log.debug("the remote code printed %d characters (kept off stdout)", len(printed.getvalue()))
        if not isinstance(text, str):
            raise RuntimeError(f"the remote code's infer() returned {type(text).__name__}, not the page's text")
        return self._prediction(text, seconds)

    def _infer(self, image_file: str, output_path: str, prompt: str):
        try:
            return self.model.infer(
                self.tokenizer,
                prompt=prompt,
                image_file=image_file,
                output_path=output_path,
                base_size=self.mode.base_size,
                image_size=self.mode.image_size,
                crop_mode=self.mode.crop_mode,
                save_results=False,  # never: it runs eval() on model output
                eval_mode=True,  # the only way infer() returns the text
            )
        except (AssertionError, RuntimeError) as exc:
            if self.device != "cuda" and "cuda" in str(exc).lower():
                raise SetupError(
                    f"the remote code of {self.options.model} needs CUDA: {_first_line(exc)}", CUDA_HINT
                ) from exc
            raise

    def _record(self, generated: list[int] | None) -> None:
        self._generate_called, self._generated = True, generated

    def _prediction(self, text: str, seconds: float) -> Prediction:
        for token in self.strip_tokens:
            text = text.replace(token, "")
        generated = self._generated
        if generated is None:
            tokens = len(self.tokenizer.encode(text, add_special_tokens=False))
            return Prediction(text=text, tokens=tokens, finish=self._guess_finish(tokens), seconds=seconds)
        from dsocr_cli.engines.ngram import looks_looped

        if self.eos_id in generated:
            ids, finish = generated[: generated.index(self.eos_id)], "eos"
        else:
            ids, finish = generated, ("repetition" if looks_looped(generated) else "length")
        return Prediction(text=text, tokens=len(ids), finish=finish, seconds=seconds)

    def _guess_finish(self, tokens: int) -> str:
        """Without the generated ids: "length" when the re-encoded text comes within 1% (at least 8
        tokens) of the limit in force (ours if the wrapped generate ran, else the remote code's
        8192), since decode-then-encode may merge a few tokens; else "eos"."""
        limit = self.limit if self._generate_called else REMOTE_MAX_NEW_TOKENS
        return "length" if tokens >= limit - max(8, limit // 100) else "eos"


def _watch_generate(model, limit: int, record: Callable[[list[int] | None], None]) -> None:
    """Wrap this model instance's `generate`: cap max_new_tokens at `limit`, record the new ids."""
    original = getattr(model, "generate", None)
    if not callable(original):
        return

    def generate(*args, **kwargs):
        """The remote code's call, with its token limit capped and the new ids of its one row recorded."""
        kwargs["max_new_tokens"] = min(int(kwargs.get("max_new_tokens") or limit), limit)
        output = original(*args, **kwargs)
        prompt = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
        sequences = getattr(output, "sequences", output)
        try:
            generated = sequences[0, prompt.shape[-1] :].tolist()
        except (AttributeError, IndexError, TypeError):  # an unexpected shape: finish is guessed instead
            generated = None
        record(generated)
        return output

    model.generate = generate


def save_png(image, path: Path) -> None:
    """The page as the remote code will read it: PNG without EXIF. dsocr rendered it upright
    already, and the remote code applies EXIF orientation: a kept tag would turn the page twice."""
    if image.mode not in ("RGB", "L", "RGBA", "LA", "I;16", "1", "P"):
        image = image.convert("RGB")
    elif "exif" in image.info:
        image = image.copy()
    image.info.pop("exif", None)  # only ever on a copy: the original has no tag or was copied above
    image.save(path, format="PNG")


@contextlib.contextmanager
def quiet_stdout(buffer: io.StringIO) -> Iterator[None]:
    """Python prints go to `buffer`; writes to fd 1 (C code, subprocesses) go to stderr meanwhile."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable fd 1 or 2: the Python-level redirect still holds
        saved = None
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# --- loading -------------------------------------------------------------------------------------


def load(options: EngineOptions) -> InferEngine:
    """Refuse without --trust-remote-code; check stack, GPU and mode before any weight is read;
    then load tokenizer and model once."""
    if not options.trust_remote_code:
        raise SetupError(
            f"--engine infer runs the Python code shipped with {options.model}, which dsocr does only when asked",
            "pass --trust-remote-code to allow it, and --revision COMMIT to pin the code you reviewed",
        )
    import torch

    from dsocr_cli.engines.device import resolve_dtype
    from dsocr_cli.engines.hf import _check_model_path

    device = _remote_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    source = _check_model_path(options.model)
    config = read_config(options.model, options.revision)
    if not _describe(config)[1]:
        raise SetupError(
            f"{options.model} ships no remote code (its config.json has no auto_map)",
            "use --engine hf for native checkpoints, or --engine auto",
        )
    check_stack(config)
    mode = remote_mode(options.mode, remote_generation(config))
    if options.batch_size and options.batch_size > 1:
        log.info("--engine infer takes one page at a time; --batch-size %d is ignored", options.batch_size)
    tokenizer, model = _load_remote(source, options, dtype)
    model = model.eval().to(device=device, dtype=dtype)
    if not callable(getattr(model, "infer", None)):
        raise SetupError(f"the remote code of {options.model} has no infer() method", "use --engine hf or auto")
    torch.set_grad_enabled(False)
    log.info("loaded %s (remote code) on %s (%s)", options.model, device, str(dtype).replace("torch.", ""))
    return InferEngine(model, tokenizer, options, device, dtype, mode)


def _remote_device(requested: str) -> str:
    """CUDA unless --device names another: the official code calls .cuda() whatever the model's device."""
    import torch

    from dsocr_cli.engines.device import resolve_device

    if requested in ("auto", "cuda") and not torch.cuda.is_available():
        build = torch.version.cuda
        why = f"torch {torch.__version__} " + (f"(CUDA {build}) sees no GPU" if build else "is a CPU-only build")
        raise SetupError(
            "--engine infer needs a CUDA GPU: the official remote code hard-codes .cuda()", f"{why}; {CUDA_HINT}"
        )
    device = resolve_device(requested)
    if device != "cuda":
        log.warning(
            "--device %s with --engine infer: the official DeepSeek-OCR remote code hard-codes .cuda() and will "
            "fail; only remote code that follows the model's device runs here",
            device,
        )
    return device


def _load_remote(source: str, options: EngineOptions, dtype):
    from transformers import AutoModel, AutoTokenizer

    kwargs = {"trust_remote_code": True, "revision": options.revision}
    dtype_key = "dtype" if version_tuple(transformers_version()) >= (5,) else "torch_dtype"
    tokenizer = _remote_step(lambda: AutoTokenizer.from_pretrained(source, **kwargs), options)
    model = _remote_step(
        lambda: AutoModel.from_pretrained(source, use_safetensors=True, **kwargs, **{dtype_key: dtype}), options
    )
    return tokenizer, model


def _remote_step(step, options: EngineOptions):
    """One from_pretrained: import failures of the remote code become SetupErrors naming the fix."""
    from dsocr_cli.engines.hf import _fetch

    try:
        return _fetch(step, options)
    except ImportError as exc:
        text = str(exc)
        if "LlamaFlashAttention2" in text or "is_torch_fx_available" in text:
            raise SetupError(
                f"the remote code of {options.model} does not import under {_installed(transformers_version())}: "
                f"{_first_line(exc)}",
                REMOTE_FIX,
            ) from exc
        raise SetupError(
            f"the remote code of {options.model} cannot be imported: {_first_line(exc)}",
            f"install what it needs (einops, addict, easydict, torchvision); {REMOTE_FIX}",
        ) from exc
