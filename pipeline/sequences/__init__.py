"""`rrec sequences`: benchmark-exact leave-one-out sequences with sampled candidates.

The stage follows the Amazon Reviews 2023 benchmark scripts (``kcore_filtering.py`` and
``last_out_split.py`` of hyp1231/AmazonReviews2023; DESIGN.md, "Sequence rules"):

1. repeated (user, item) pairs are dropped, keeping the earliest review (ties: source order);
2. iterative k-core on users and items until stable (``k = 0`` disables it);
3. each user's items in timestamp order, equal timestamps in source order;
4. leave-one-out: last item -> ``test``, second-to-last -> ``validation``, earlier -> ``train``
   (``train_targets: last`` keeps only the item before the validation target); history = every
   earlier item, truncated to the last ``max_history`` (``0`` keeps all, as the scripts do);
5. optional seeded user sampling;
6. candidates = target + ``num_negatives`` items drawn uniformly without replacement from the
   catalog (every item of the k-core set) minus the user's whole sequence, shuffled.

Two layers. The global part (dedupe, k-core, ordering, partitioning by user) runs in the driver
on integer codes with vectorised numpy: 14M reviews are 14M small integer pairs. The per-user
part (rows, histories, candidates, metadata join) is a pure function of one partition of users,
mapped over partitions by Dask; its random draws come from a counter-based stream keyed by
(seed, user_id, target position), so the output is the same for any partitioning or cluster.
"""

from pipeline.sequences.candidates import (
    CHUNK_ELEMENTS,
    Catalog,
    DistinctStrings,
    build_sequence_rows,
    check_catalog_size,
    draw_negatives,
    example_positions,
    insert_targets,
    user_chunks,
)
from pipeline.sequences.selection import (
    Selection,
    UserEvents,
    chronological_order,
    first_of_pairs,
    kcore_mask,
    read_interaction_keys,
    select_interactions,
)
from pipeline.sequences.settings import STAGE, SequencesSettings
from pipeline.sequences.stage import SEQUENCES, SequencesStage, default_partition_size, partition_bounds, register, run_sequences
from pipeline.sequences.streams import bounded, row_stream_keys, stream_codes, stream_draws, user_stream_keys

__all__ = [
    "CHUNK_ELEMENTS",
    "SEQUENCES",
    "STAGE",
    "Catalog",
    "DistinctStrings",
    "Selection",
    "SequencesSettings",
    "SequencesStage",
    "UserEvents",
    "bounded",
    "build_sequence_rows",
    "check_catalog_size",
    "chronological_order",
    "default_partition_size",
    "draw_negatives",
    "example_positions",
    "first_of_pairs",
    "insert_targets",
    "kcore_mask",
    "partition_bounds",
    "read_interaction_keys",
    "register",
    "row_stream_keys",
    "run_sequences",
    "select_interactions",
    "stream_codes",
    "stream_draws",
    "user_chunks",
    "user_stream_keys",
]
