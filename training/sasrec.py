"""SASRec (Kang & McAuley, ICDM 2018, "Self-Attentive Sequential Recommendation") in torch.

A compact re-implementation of the reference model: item embeddings scaled by sqrt(d) plus
learned positional embeddings, ``blocks`` pre-norm causal self-attention blocks with a
point-wise feed-forward network, padded positions zeroed after every block (the paper's
"timeline mask"), a final layer norm, and the score of item i at step t as the dot product of
the hidden state with i's (shared) input embedding. Trained with Adam on the next item at every
position, with the reference loss, binary cross-entropy against one uniformly sampled negative
per position (``loss="bce"``, the default), or with cross-entropy over the whole catalog
(``loss="ce"``; Klenitskiy & Vasilev, RecSys 2023, "Turning Dross Into Gold Loss: is BERT4Rec
really better than SASRec?"), which reached its best validation score in fewer epochs on the
demo world but not a better test score (docs/RESULTS.md). The full softmax costs one
``[positions, items]`` product per batch: keep ``bce`` for catalogs of hundreds of thousands of
items. As in the reference code, training is checked on held-out data every few epochs and the
best model is kept (early stopping), so the epoch count is a ceiling rather than a setting to
tune per dataset.

The model lives here rather than in a dependency such as RecBole (a large framework with
its own version pins, not tried beside torch 2.13 / transformers 5); it is small enough to
read against the paper.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from core.progress import track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SasRecConfig:
    """Hyper-parameters; defaults follow the paper's settings for sparse Amazon data."""

    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    eval_every: int = 10
    patience: int = 5
    seed: int = 42
    loss: Literal["bce", "ce"] = "bce"


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor, timeline: torch.Tensor) -> torch.Tensor:
        # As in the reference code, only the query is normalised; keys/values are the raw stream.
        query = self.attention_norm(x)
        attended, _ = self.attention(query, x, x, attn_mask=causal_mask, need_weights=False)
        x = self.ffn_norm(query + attended)
        x = x + self.ffn(x)
        return x * timeline


class SasRec(nn.Module):
    """The SASRec network over item indices 1..num_items (0 is padding)."""

    def __init__(self, num_items: int, config: SasRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden, padding_idx=0)
        self.position_embedding = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config.hidden, config.heads, config.dropout) for _ in range(config.blocks))
        self.final_norm = nn.LayerNorm(config.hidden, eps=1e-8)

    def encode(self, sequences: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position of left-padded item sequences ``[batch, max_len]``."""
        length = sequences.shape[1]
        x = self.item_embedding(sequences) * math.sqrt(self.config.hidden)
        x = x + self.position_embedding(torch.arange(length, device=sequences.device))[None]
        timeline = (sequences != 0).unsqueeze(-1).to(x.dtype)
        x = self.dropout(x) * timeline
        causal_mask = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), diagonal=1)
        for block in self.blocks:
            x = block(x, causal_mask, timeline)
        return self.final_norm(x)

    def score(self, hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Dot products of hidden states ``[..., d]`` with items ``[..., n]`` -> ``[..., n]``."""
        return (hidden.unsqueeze(-2) * self.item_embedding(items)).sum(-1)


def left_pad(sequence: Sequence[int], max_len: int) -> list[int]:
    """The last ``max_len`` indices of ``sequence``, left-padded with zeros."""
    tail = list(sequence[-max_len:])
    return [0] * (max_len - len(tail)) + tail


def _sample_negatives(rng: np.random.Generator, positives: np.ndarray, seen: list[set[int]], num_items: int) -> np.ndarray:
    """One uniform negative per position, never an item of that user's sequence."""
    negatives = rng.integers(1, num_items + 1, size=positives.shape)
    for row, user_items in enumerate(seen):
        if len(user_items) >= num_items:
            continue  # the user has every item: no true negative exists, keep the uniform draw
        excluded = np.fromiter(user_items, dtype=negatives.dtype)
        clash = np.isin(negatives[row], excluded)
        while clash.any():
            negatives[row, clash] = rng.integers(1, num_items + 1, size=int(clash.sum()))
            clash = np.isin(negatives[row], excluded)
    return np.where(positives == 0, 0, negatives)


def train_sasrec(
    sequences: Sequence[Sequence[int]],
    num_items: int,
    config: SasRecConfig,
    validate: Callable[[SasRec], float] | None = None,
) -> SasRec:
    """Train SASRec on per-user item-index sequences (chronological, indices in 1..num_items).

    Every position of a sequence predicts the next item. With ``validate`` (a held-out score,
    higher is better, e.g. NDCG@5 on the validation split), the model is scored every
    ``eval_every`` epochs, training stops after ``patience`` checks without improvement
    (0: never) and the best model is returned. Deterministic for a given seed.
    """
    usable = [list(s) for s in sequences if len(s) >= 2]
    if not usable:
        raise ValueError("SASRec needs at least one training sequence with two or more items")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SasRec(num_items, config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.98))
    inputs = np.array([left_pad(s[:-1], config.max_len) for s in usable])
    positives = np.array([left_pad(s[1:], config.max_len) for s in usable])
    seen = [set(s) for s in usable]
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    best_score, best_state, checks_without_gain = -math.inf, None, 0
    model.train()
    for epoch in track(range(config.epochs), "training SASRec", total=config.epochs):
        order = rng.permutation(len(usable))
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            seq = torch.from_numpy(inputs[batch])
            pos = torch.from_numpy(positives[batch])
            mask = pos != 0
            hidden = model.encode(seq)
            if config.loss == "ce":
                # Every real position against the whole catalog (index 0, padding, excluded).
                logits = hidden[mask] @ model.item_embedding.weight[1:].T
                loss = nn.functional.cross_entropy(logits, pos[mask] - 1, reduction="sum")
            else:
                neg = torch.from_numpy(_sample_negatives(rng, positives[batch], [seen[i] for i in batch], num_items))
                pos_logits = model.score(hidden, pos.unsqueeze(-1)).squeeze(-1)
                neg_logits = model.score(hidden, neg.unsqueeze(-1)).squeeze(-1)
                loss = loss_fn(pos_logits[mask], torch.ones_like(pos_logits[mask])) + loss_fn(
                    neg_logits[mask], torch.zeros_like(neg_logits[mask])
                )
            optimiser.zero_grad()
            (loss / mask.sum()).backward()
            optimiser.step()
            total += loss.item()
            count += int(mask.sum())
        log.debug("SASRec epoch %d: %s %.4f", epoch + 1, config.loss, total / max(count, 1))
        if validate is None or ((epoch + 1) % config.eval_every and epoch + 1 < config.epochs):
            continue
        model.eval()
        score = validate(model)
        model.train()
        log.info("SASRec epoch %d: %s %.4f, validation %.4f", epoch + 1, config.loss, total / max(count, 1), score)
        if score > best_score:
            best_score, best_state, checks_without_gain = score, copy.deepcopy(model.state_dict()), 0
        else:
            checks_without_gain += 1
            if config.patience and checks_without_gain >= config.patience:
                log.info("SASRec: no gain in %d checks, stopping at epoch %d", checks_without_gain, epoch + 1)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        log.info("SASRec: kept the model with validation score %.4f", best_score)
    model.eval()
    return model


@torch.no_grad()
def score_candidates(model: SasRec, history: Sequence[int], candidates: Sequence[int]) -> np.ndarray:
    """Scores of candidate item indices after a history of item indices."""
    return score_many(model, [history], [candidates])[0]


@torch.no_grad()
def score_many(
    model: SasRec, histories: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], batch_size: int = 256
) -> list[np.ndarray]:
    """Scores of each row's candidates after that row's history, rows encoded in batches."""
    scores: list[np.ndarray] = []
    for start in range(0, len(histories), batch_size):
        chunk = range(start, min(start + batch_size, len(histories)))
        hidden = model.encode(torch.tensor([left_pad(histories[i], model.config.max_len) for i in chunk]))[:, -1]
        for row, i in enumerate(chunk):
            scores.append(model.score(hidden[row], torch.tensor(list(candidates[i]))).numpy())
    return scores
