"""The vectorised windowed n-gram ban against a plain Python statement of the rule."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsocr_cli.engines.ngram import WindowedNoRepeatNGram, ban_repeats, looks_looped


def reference_banned(row: list[int], n: int, window: int, exempt: set[int]) -> set[int]:
    recent = row[-window:]
    prefix = row[-(n - 1) :] if n > 1 else []
    if len(row) < n - 1:
        return set()
    return {
        recent[i + n - 1]
        for i in range(len(recent) - n + 1)
        if recent[i : i + n - 1] == prefix and recent[i + n - 1] not in exempt
    }


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=30), min_size=1, max_size=4),
    st.integers(2, 4),
    st.integers(2, 12),
)
def test_ban_matches_the_rule(rows, n, window):
    vocab, exempt = 7, {5}
    capacity = 32
    history = torch.full((len(rows), capacity), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        history[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(row) for row in rows])
    scores = ban_repeats(history, lengths, torch.zeros(len(rows), vocab), n, window, torch.tensor(sorted(exempt)))
    for r, row in enumerate(rows):
        banned = {t for t in range(vocab) if scores[r, t] == float("-inf")}
        assert banned == reference_banned(row, n, max(window, n), exempt), (row, n, window)


def test_logits_processor_ignores_the_prompt():
    prompt = [9, 9, 9, 9]
    ban = WindowedNoRepeatNGram(n=2, window=10, prompt_length=len(prompt))
    ids = torch.tensor([prompt + [1, 2, 1]])
    scores = ban(ids, torch.zeros(1, 10))
    assert scores[0, 2] == float("-inf")  # "1 2" already seen: 2 may not follow 1 again
    assert scores[0, 9] == 0  # 9 9 is only in the prompt


def test_loop_detection():
    assert looks_looped([1, 2, 3] * 30)
    assert not looks_looped(list(range(100)))
