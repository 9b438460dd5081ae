"""The prefill's image features (engines/views.py) equal transformers' own, in its order: pages
with and without tiles in one batch, from the real processor on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image


def test_page_features_equal_transformers_image_features(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from dsocr_cli.engines.views import ViewEncoder, page_features
    from dsocr_cli.options import TASK_PROMPTS

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(tiny_model)
    rng = np.random.default_rng(0)
    sizes = [(300, 200), (1400, 1000), (800, 2000)]  # no tiles, then two tiled pages
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    inputs = processor(images=images, text=[TASK_PROMPTS["markdown"]] * 3, return_tensors="pt", padding=True)
    counts = torch.as_tensor(inputs["num_local_patches"]).tolist()
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0, counts
    with torch.no_grad():
        expected = model.model.get_image_features(
            inputs["pixel_values"], inputs["pixel_values_local"], inputs["num_local_patches"], return_dict=True
        ).pooler_output
        features = page_features(ViewEncoder(model), model.model, inputs)
    assert features.shape[0] == int((inputs["input_ids"] == model.config.image_token_id).sum())
    torch.testing.assert_close(features, torch.cat(expected))


def test_view_encoder_captures_nothing_without_cuda(tiny_model, caplog):
    """On CPU no capture is tried (it would fail, and warn), so every call runs the eager modules."""
    from transformers import AutoModelForImageTextToText

    from dsocr_cli.engines.views import ViewEncoder

    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).eval()
    encoder = ViewEncoder(model)
    with caplog.at_level("WARNING", logger="dsocr_cli.engines.views"):
        assert encoder.warm_up((768,)) is False and not encoder.graphs
    assert not caplog.records, "no capture was tried, so none failed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_replayed_view_graphs_equal_the_eager_modules_on_cuda(tiny_model):
    """Counts that need several chunks (13 = 8 + 4 + 1) and one that is a chunk: each replay's
    features are copied out before the next overwrites the shared pool."""
    from transformers import AutoModelForImageTextToText

    from dsocr_cli.engines.views import ViewEncoder

    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32).to("cuda").eval()
    encoder = ViewEncoder(model)
    assert encoder.warm_up((768,)) and len(encoder.graphs) == 4
    torch.manual_seed(0)
    with torch.inference_mode():
        for chunks in ([1], [4], [8, 4, 1]):
            pixels = torch.randn(sum(chunks), 3, 768, 768, device="cuda")
            starts = [sum(chunks[:i]) for i in range(len(chunks))]
            # the eager modules on the same chunks: the same kernels, so only a wrong copy differs
            eager = torch.cat([encoder.eager(pixels[s : s + n]) for s, n in zip(starts, chunks, strict=True)])
            torch.testing.assert_close(encoder(pixels), eager, rtol=1e-5, atol=1e-5 * eager.abs().max().item())
