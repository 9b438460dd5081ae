"""A stand-in for DeepSeek-OCR's remote code: the official `infer` signature and habits, no network.

Like the official code, `infer` takes an image path, applies EXIF orientation, creates output_path
and output_path/images (an empty output_path fails), prints to stdout, calls `self.generate(...,
max_new_tokens=8192, eos_token_id=...)`, decodes with special tokens kept and returns the text only
with eval_mode=True. Unlike it, it follows the model's device instead of calling `.cuda()`, and its
"generation" is a deterministic grounding text made from the image, the sizes asked for and the
loaded weight, so tests can check each of them. save_results=True raises: the official code then
evaluates model output with eval(), and dsocr must never ask for it.
"""

import os

import torch
from PIL import Image, ImageOps
from transformers import PreTrainedModel

from .configuration_stub import StubConfig

EOS_TEXT = "<｜end▁of▁sentence｜>"


class StubModel(PreTrainedModel):
    config_class = StubConfig
    base_model_prefix = "stub"

    def __init__(self, config):
        super().__init__(config)
        self.scale = torch.nn.Parameter(torch.ones(config.hidden_size))
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, *args, **kwargs):
        raise NotImplementedError("the stand-in only answers infer()")

    def generate(self, input_ids, answer_ids=(), max_new_tokens=8192, eos_token_id=None, **kwargs):
        """Emit `answer_ids` then EOS, cut at max_new_tokens: the prompt plus the new tokens."""
        new = (list(answer_ids) + [eos_token_id])[:max_new_tokens]
        tail = torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)
        return torch.cat([input_ids, tail], dim=1)

    def infer(
        self,
        tokenizer,
        prompt="",
        image_file="",
        output_path="",
        base_size=1024,
        image_size=640,
        crop_mode=True,
        test_compress=False,
        save_results=False,
        eval_mode=False,
    ):
        if save_results:
            raise RuntimeError("stand-in: save_results=True would eval() model output; never pass it")
        os.makedirs(output_path, exist_ok=True)
        os.makedirs(f"{output_path}/images", exist_ok=True)
        image = ImageOps.exif_transpose(Image.open(image_file)).convert("RGB")
        device = self.scale.device  # the official code calls .cuda() here
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).to(device)
        mean = pixels.float().mean().item()
        weight = self.scale.float().mean().item()
        width, height = image.size
        answer = (
            "<|ref|>title<|/ref|><|det|>[[10, 10, 500, 60]]<|/det|>\n"
            f"# Page {width}x{height}\n\n"
            "<|ref|>text<|/ref|><|det|>[[10, 80, 990, 990]]<|/det|>\n"
            f"mean={mean:.1f} base={base_size} image={image_size} crop={crop_mode} weight={weight:g}"
        )
        input_ids = torch.tensor([[0] + tokenizer.encode(prompt, add_special_tokens=False)], device=device)
        with torch.no_grad():
            output_ids = self.generate(
                input_ids,
                answer_ids=tokenizer.encode(answer, add_special_tokens=False),
                max_new_tokens=8192,
                eos_token_id=tokenizer.eos_token_id,
                no_repeat_ngram_size=35,
            )
        print("=====================")
        print("BASE: ", (1, 256, 1280))
        print("=====================")
        outputs = tokenizer.decode(output_ids[0, input_ids.shape[1] :].tolist())
        print(outputs.replace(EOS_TEXT, "\n"), flush=True)  # the official code streams the text
        if eval_mode:
            if outputs.endswith(EOS_TEXT):
                outputs = outputs[: -len(EOS_TEXT)]
            return outputs.strip()
        return None


class StubOCR2Model(StubModel):
    """The same stand-in under a DeepSeek-OCR-2-like class name (the v2 remote code's auto_map)."""
