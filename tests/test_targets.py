"""The relevance a walk starts from (relprop.targets.start_relevance), written out by hand.

A language model's target selects one position of a (batch, tokens, vocabulary) output;
relprop then works on the selected rows alone. The expected values here are the
definition (docs/semantics.md §Contrastive): the selected logit with weight 1, and for the
contrast every other entry of the same row, each pass rescaled to Σ = 1 per sample.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

import relprop
from relprop import targets


def _start(logits: torch.Tensor, target: object, contrastive: bool = True) -> list:
    flat, spec = pytree.tree_flatten(logits)
    start = targets.start_relevance(
        logits, flat, spec, target, start="onehot", contrastive=contrastive, contrastive_given=False, batch=len(logits)
    )
    return start.relevance


def test_next_token_start_is_the_selected_row_and_its_contrast() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    tokens = [2, 0, 6]
    (rel,) = _start(logits, relprop.targets.next_token(tokens, position=-2))
    expected = torch.zeros(2, 3, 5, 7, dtype=torch.float64)
    for b, t in enumerate(tokens):
        expected[0, b, -2, t] = 1.0
        expected[1, b, -2] = 1.0 / 6
        expected[1, b, -2, t] = 0.0
    assert torch.equal(rel, expected)
    (positive,) = _start(logits, relprop.targets.next_token(tokens), contrastive=False)
    assert positive.shape == (1, 3, 5, 7) and torch.equal(positive[0, :, -1], expected[0, :, -2])


def test_a_selection_of_several_rows_is_rescaled_per_sample() -> None:
    logits = torch.randn(2, 6, 4)

    def target(out: torch.Tensor) -> torch.Tensor:  # two positions, weights 1 and -3
        return out[:, 1, 0] - 3 * out[:, 4, 2]

    (rel,) = _start(logits, target)
    assert torch.allclose(rel[0, :, 1, 0], torch.full((2,), 0.25)) and torch.allclose(
        rel[0, :, 4, 2], torch.full((2,), -0.75)
    )
    assert torch.allclose(rel[1].abs().sum((1, 2)), torch.ones(2))
    assert torch.equal(rel[1, :, 1, 0], torch.zeros(2)) and torch.equal(rel[1, :, 0], torch.zeros(2, 4))
    assert torch.allclose(rel[1, :, 1, 1], torch.full((2,), 1 / 6))  # six other entries in the two rows


def test_a_nan_in_an_explained_row_is_an_input_error_and_elsewhere_not() -> None:
    logits = torch.randn(3, 4, 5)
    logits[1, 0, 2] = float("nan")  # a position the target does not read
    _start(logits, relprop.targets.next_token(1))
    logits[2, -1, 4] = float("inf")
    with pytest.raises(relprop.InputError, match=r"sample\(s\) \[2\]"):
        _start(logits, relprop.targets.next_token(1))


def test_an_empty_contrast_is_a_target_error() -> None:
    logits = torch.randn(2, 3, 1)  # a vocabulary of one: no other entry to contrast with
    with pytest.raises(relprop.TargetError, match="contrast .* selects nothing for sample 0"):
        _start(logits, relprop.targets.next_token(0))


def test_a_long_token_list_is_described_not_printed() -> None:
    logits = torch.randn(2, 3, 5)
    with pytest.raises(relprop.TargetError, match=r"of shape \(2, 300\)") as info:
        _start(logits, relprop.targets.next_token([[1] * 300] * 2))
    assert len(str(info.value)) < 300
