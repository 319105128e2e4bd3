"""Counter-based random streams keyed by (seed, user_id, position).

Every random choice of the stage (user sampling, negatives, candidate shuffles) comes from
these streams, so the output never depends on the partitioning or the cluster.
"""

from __future__ import annotations

import hashlib

import numpy as np

# SplitMix64 (Steele, Lea & Flood 2014): a stateless 64-bit mixer. Step j of a stream with key
# K is mix(mix(K) + (j + 1) * GAMMA), computable for millions of streams at once with numpy,
# unlike one numpy Generator object per user (tens of microseconds each).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def user_stream_keys(seed: int, user_ids: list[str]) -> np.ndarray:
    """A 64-bit key per user from a stable hash of (seed, user_id).

    blake2b rather than Python's ``hash``, which is salted per process: the key must be the
    same on every worker and in every run.
    """
    prefix = f"{seed}\x1f".encode()
    keys = np.empty(len(user_ids), dtype=np.uint64)
    for index, user_id in enumerate(user_ids):
        digest = hashlib.blake2b(prefix + user_id.encode("utf-8"), digest_size=8).digest()
        keys[index] = int.from_bytes(digest, "little")
    return keys


def row_stream_keys(user_keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Key of the stream of one example: its user's key and its target's position in the sequence."""
    return mix64(user_keys ^ mix64(positions.astype(np.uint64) * _GAMMA + _GAMMA))


def stream_draws(keys: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 32-bit draws of each stream: a (len(keys), count) uint32 matrix.

    Each 64-bit mix yields two draws. The key is mixed before stepping, so streams of related
    keys (k, k + GAMMA, ...) do not run along each other shifted by one step.
    """
    return _stream_mixes(keys, count).view(np.uint32)[:, :count]


def stream_codes(keys: np.ndarray, count: int, n: int) -> np.ndarray:
    """``bounded(stream_draws(keys, count), n)`` as an int32 matrix, without the temporaries.

    Draw ``2j`` of a stream is the low half of its ``j``-th mix and draw ``2j + 1`` the high
    half (the little-endian view of :func:`stream_draws`).
    """
    mixes = _stream_mixes(keys, count)
    codes = np.empty((len(keys), count), dtype=np.int32)
    low = mixes & np.uint64(0xFFFFFFFF)
    low *= np.uint64(n)
    low >>= np.uint64(32)
    codes[:, 0::2] = low
    del low
    mixes >>= np.uint64(32)
    mixes *= np.uint64(n)
    mixes >>= np.uint64(32)
    codes[:, 1::2] = mixes[:, : count // 2]
    return codes


def _stream_mixes(keys: np.ndarray, count: int) -> np.ndarray:
    """The first ``ceil(count / 2)`` 64-bit mixes of each stream, mixed in place."""
    steps = (np.arange(1, (count + 1) // 2 + 1, dtype=np.uint64) * _GAMMA)[None, :]
    mixes = mix64(keys)[:, None] + steps
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        mixes ^= mixes >> np.uint64(shift)
        mixes *= multiplier
    mixes ^= mixes >> np.uint64(31)
    return mixes


def bounded(draws: np.ndarray, n: int) -> np.ndarray:
    """Map uniform 32-bit draws to ``0 .. n-1`` (multiply-shift; bias below n / 2**32)."""
    return ((draws.astype(np.uint64) * np.uint64(n)) >> np.uint64(32)).view(np.int64)
