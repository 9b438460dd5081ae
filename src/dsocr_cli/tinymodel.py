"""A tiny random-weight DeepSeek-OCR-2 built from a config, with a small tokenizer that carries the
real special tokens. It runs the real transformers loading, processing and generation code in
seconds on a CPU, so `dsocr selftest` and the tests prove an install without downloading weights.
"""

from __future__ import annotations

from pathlib import Path

# The special strings of the real vocabulary (DEEPSEEK_OCR.md); BOS and EOS keep their real ids 0 and 1.
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIAL_TOKENS = [
    BOS,
    EOS,
    PAD,
    "<image>",
    "<|grounding|>",
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|User|>",
    "<|Assistant|>",
    "<td>",
    "</td>",
]

_CORPUS = [
    "Convert the document to markdown. OCR this image. Free OCR. Parse the figure.",
    "Describe this image in detail. Locate the title in the image.",
    "# Title\n\n## Section\n\nThe quick brown fox jumps over the lazy dog. 0123456789",
    "| a | b |\n|---|---|\n| 1 | 2 |\n<table><tr><td>x</td></tr></table>",
    "\\[ E = mc^2 \\] \\( a^2 + b^2 = c^2 \\) [[12, 34, 560, 78]] text title image table",
]


def build_tokenizer(vocab_size: int = 400):
    """A byte-level BPE trained on a few lines, wrapped as a left-padding fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_config(vocab_size: int, image_token_id: int, pad_token_id: int):
    """Sizes that keep every code path of the real model (SAM, encoder, dense + MoE decoder)."""
    from transformers import DeepseekOcr2Config

    return DeepseekOcr2Config(
        image_token_id=image_token_id,
        vision_config={
            "sam_config": {
                "hidden_size": 32,
                "output_channels": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "window_size": 4,
                "global_attn_indexes": [1],
                "downsample_channels": [32, 64],
                "image_size": 768,
                "patch_size": 64,
            },
            "encoder_config": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
            },
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "mlp_layer_types": ["dense", "sparse"],
            "n_routed_experts": 4,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": pad_token_id,
        },
    )


def _spread_weights(model) -> None:
    """Re-draw matrices at 1/sqrt(fan-in): the config's own init (SAM's is 1e-10) would make every
    image give the same text, and tests could then not tell one page's output from another's."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / param.shape[-1] ** 0.5)


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a loadable tiny checkpoint (model + processor) into `folder` and return it."""
    import torch
    from transformers import (
        DeepseekOcr2ForConditionalGeneration,
        DeepseekOcr2ImageProcessorPil,
        DeepseekOcr2Processor,
        GenerationConfig,
    )

    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config = tiny_config(len(tokenizer), image_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = DeepseekOcr2ForConditionalGeneration(config).eval()
    _spread_weights(model)
    model.generation_config = GenerationConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    # Every view of the tiny SAM is 768 px, so every view costs 144 tokens (+1 separator per image).
    image_processor = DeepseekOcr2ImageProcessorPil(size={"height": 768, "width": 768}, tile_size=768)
    processor = DeepseekOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
