"""SAM's attention with the relative-position bias folded into the dot product equals transformers'
own attention (float32, the tiny model's SAM with random relative-position tables)."""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.mark.parametrize("side", [768, 640, 512])
def test_folded_sam_attention_equals_transformers(tiny_model, side):
    """Global and windowed blocks, at the trained size, with window padding, and interpolated."""
    from transformers import AutoModelForImageTextToText

    from dsocr_cli.engines.vision import FoldedSamAttention, fold_sam_attention

    torch.manual_seed(side)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    sam = model.model.vision_tower.sam_encoder
    for module in sam.modules():
        if getattr(module, "use_rel_pos", False):  # checkpoints start them at zero: make the bias matter
            module.rel_pos_h.data.normal_()
            module.rel_pos_w.data.normal_()
    reference = copy.deepcopy(sam)
    assert fold_sam_attention(sam) == len(sam.layers)
    assert all(isinstance(layer.attn, FoldedSamAttention) for layer in sam.layers)
    assert {layer.window_size > 0 for layer in sam.layers} == {True, False}, "both kinds of block"
    pixels = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = reference(pixels).last_hidden_state
        folded = sam(pixels).last_hidden_state
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_the_native_engine_loads_with_folded_sam_attention(tiny_model):
    """What users run: every SAM block of the loaded model uses the folded attention."""
    from dsocr_cli.engines import load_engine
    from dsocr_cli.engines.vision import FoldedSamAttention
    from dsocr_cli.options import EngineOptions

    engine = load_engine(EngineOptions(model=str(tiny_model), device="cpu"))
    blocks = engine.model.model.vision_tower.sam_encoder.layers
    assert all(isinstance(layer.attn, FoldedSamAttention) for layer in blocks)


def test_kept_relative_position_tables_follow_new_weights(tiny_model):
    """The folded attention keeps each size's relative-position table between calls; weights
    changed in place (a fine-tune, a test) must not leave it computing with the old ones."""
    from transformers import AutoModelForImageTextToText

    from dsocr_cli.engines.vision import fold_sam_attention

    torch.manual_seed(3)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    sam = model.model.vision_tower.sam_encoder
    reference = copy.deepcopy(sam)
    fold_sam_attention(sam)
    pixels = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        sam(pixels)  # the zero tables are now kept
        for folded, plain in zip(sam.modules(), reference.modules(), strict=True):
            if getattr(folded, "use_rel_pos", False):
                folded.rel_pos_h.normal_()
                folded.rel_pos_w.normal_()
                plain.rel_pos_h.copy_(folded.rel_pos_h)
                plain.rel_pos_w.copy_(folded.rel_pos_w)
        expected = reference(pixels).last_hidden_state
        folded_out = sam(pixels).last_hidden_state
    torch.testing.assert_close(folded_out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
