"""Repetition control that stays on the device: a windowed no-repeat n-gram ban, vectorised.

transformers' NoRepeatNGramLogitsProcessor walks every sequence in Python at every step and looks
at the whole history. DeepSeek-OCR's own vLLM scripts ban an n-gram only when it already occurred
within a recent window, and never ban table cell tags, which legitimately repeat. This does the
same for a whole batch in a few tensor operations per step, with no host synchronisation, so it
also runs inside a captured CUDA graph.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


def ban_repeats(
    history: torch.Tensor, lengths: torch.Tensor, scores: torch.Tensor, n: int, window: int, exempt: torch.Tensor
) -> torch.Tensor:
    """Scores with -inf on every token that would repeat an n-gram of the last `window` tokens.

    `history` (batch, capacity) holds each row's generated ids from column 0, `lengths` how many.
    """
    window = max(window, n)
    offsets = torch.arange(window, device=history.device)
    index = lengths[:, None] - window + offsets  # the last `window` columns of each row
    recent = history.gather(1, index.clamp(min=0, max=history.shape[1] - 1))
    recent = torch.where(index >= 0, recent, torch.full_like(recent, -1))
    grams = recent.unfold(1, n, 1)  # (batch, grams, n)
    prefix = recent[:, -(n - 1) :].unsqueeze(1)
    hit = (grams[:, :, :-1] == prefix).all(dim=-1) & (grams >= 0).all(dim=-1)
    banned = grams[:, :, -1]
    if exempt.numel():
        hit &= ~torch.isin(banned, exempt)
    vocab = scores.shape[-1]
    target = torch.where(hit, banned, torch.full_like(banned, vocab))
    mask = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, target, True)
    return scores.masked_fill(mask[:, :vocab], float("-inf"))


class WindowedNoRepeatNGram(LogitsProcessor):
    """The ban as a transformers logits processor, for `generate` (the reference decoding path)."""

    def __init__(self, n: int, window: int, prompt_length: int, exempt_ids: tuple[int, ...] = ()):
        self.n = n
        self.window = max(window, n)
        self.prompt_length = prompt_length
        self.exempt = torch.tensor(sorted(set(exempt_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if self.n < 2 or generated.shape[1] < self.n:
            return scores
        if self.exempt.device != scores.device:  # once: a copy per step would stall the GPU
            self.exempt = self.exempt.to(scores.device)
        lengths = torch.full((generated.shape[0],), generated.shape[1], device=generated.device)
        return ban_repeats(generated, lengths, scores, self.n, self.window, self.exempt)


def looks_looped(ids: list[int], max_period: int = 64, min_repeats: int = 3, min_span: int = 48) -> bool:
    """True when the tail of a generation is one short period repeated: the model is stuck."""
    for period in range(1, max_period + 1):
        span = max(period * min_repeats, min_span)
        if len(ids) < span:
            break
        tail = ids[-span:]
        if all(tail[i] == tail[i - period] for i in range(period, span)):
            return True
    return False


def looping(history: torch.Tensor, lengths: torch.Tensor, span: int, max_period: int) -> torch.Tensor:
    """Rows whose last `span` generated tokens repeat the `span` tokens some period p <= max_period
    earlier: a loop the n-gram ban cannot break (its period is longer than the ban's window).

    `history` (batch, capacity) holds each row's generated ids from column 0, `lengths` how many.
    Runs on the device in a few tensor operations, so the decoder checks every row at once.
    """
    width = span + max_period
    index = lengths[:, None] - width + torch.arange(width, device=history.device)
    recent = history.gather(1, index.clamp(min=0, max=history.shape[1] - 1))
    tail = recent[:, max_period:]  # the last `span` tokens
    earlier = recent.unfold(1, span, 1)[:, :max_period]  # start s compares with period max_period - s
    same = (earlier == tail[:, None, :]).all(dim=-1) & (index[:, :max_period] >= 0)
    return same.any(dim=-1)
