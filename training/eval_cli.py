"""``rrec evaluate`` and ``rrec baselines``: metrics tables over a released config.

Both take ``--dataset PATH_OR_ID --subset NAME [--revision TAG] --output FILE.json`` and the
YAML settings file as ``--config FILE`` (sections ``evaluate``, ``baselines``); the old
spellings (``--config NAME`` for the subset, ``--settings FILE``) still work with a deprecation
message (:mod:`training.cli_options`). Results accumulate: a method already in ``--output`` is
kept unless evaluated again, so baselines and variants end up in one JSON and one Markdown
table (``FILE.md``) laid out like the paper's Table 1. Every method records the candidates it
ranked per row (``candidates``): one table compares methods on the same candidate sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.cli_common import user_errors
from training.cli_options import ConfigOpt, DatasetOpt, RevisionOpt, SettingsOpt, SubsetOpt, dataset_options

OutputOpt = Annotated[
    Path, typer.Option("--output", help="Results JSON (method -> metrics as fractions); FILE.md gets the table.", dir_okay=False)
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Evaluate only the first N rows of the split.", min=1)]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Split to evaluate: test (default) or validation.")]


def register(app: typer.Typer) -> None:
    """Add ``rrec evaluate`` and ``rrec baselines`` to the ``rrec`` app."""
    app.command("evaluate")(evaluate_command)
    app.command("baselines")(baselines_command)


@user_errors
def evaluate_command(
    model: Annotated[
        Path, typer.Option("--model", help="Trained model folder (`rrec train sft` / `grpo` output).", exists=True, file_okay=False)
    ],
    dataset: DatasetOpt,
    output: OutputOpt,
    subset: SubsetOpt = None,
    revision: RevisionOpt = None,
    variant: Annotated[
        str | None,
        typer.Option("--variant", help="A or C: rationale then item; B: item only (default: the variant the model was trained as)."),
    ] = None,
    limit: LimitOpt = None,
    split: SplitOpt = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Rows generated together.", min=1)] = None,
    candidate_batch_size: Annotated[int | None, typer.Option("--candidate-batch-size", help="Candidates scored per pass.", min=1)] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Longest generated answer.", min=1)] = None,
    history_k: Annotated[int | None, typer.Option("--history-k", help="History items in the prompt (default: as trained).", min=1)] = None,
    num_candidates: Annotated[
        int | None, typer.Option("--num-candidates", help="Candidates listed in the prompt (default: as trained).", min=0)
    ] = None,
    prompt_seed: Annotated[
        int | None, typer.Option("--prompt-seed", help="Seed of the prompt's candidate draw (default: as trained).")
    ] = None,
    generations: Annotated[
        Path | None,
        typer.Option(
            "--generations", help="Parquet file for the generations (default: OUTPUT.<variant>.generations.parquet).", dir_okay=False
        ),
    ] = None,
    config: ConfigOpt = None,
    settings_file: SettingsOpt = None,
) -> None:
    """Evaluate a trained model: candidate ranking by likelihood and greedy generation.

    Ranking gives HR@1, HR@5, NDCG@5; generation gives generative HR@1, valid and
    hallucination rates. The generations (sequence key + rationale) are saved as Parquet so a
    judge can score the rationales. Prompt settings that list a subset of the candidates are
    refused: the prompt shows every candidate or none (DESIGN.md, "Evaluation protocol").
    """
    from core.cli_common import settings_for
    from training.evaluate import EvalSettings, default_variant, evaluate
    from training.metrics import write_results
    from training.paper_variants import BY_NAME

    chosen = (variant or default_variant(model)).upper()
    if chosen not in BY_NAME:
        raise ValueError(f"--variant must be A, B or C, not {variant!r}")
    options = dataset_options(subset, config, settings_file)
    settings, _ = settings_for(
        options.config_file,
        "evaluate",
        EvalSettings,
        limit=limit,
        split=split,
        batch_size=batch_size,
        candidate_batch_size=candidate_batch_size,
        max_new_tokens=max_new_tokens,
        history_k=history_k,
        num_candidates=num_candidates,
        prompt_seed=prompt_seed,
        generations=generations or output.with_name(f"{output.stem}.{chosen}.generations.parquet"),
    )
    infer_rationale = BY_NAME[chosen].infers_rationale
    metrics = evaluate(model, dataset, options.subset, revision, infer_rationale=infer_rationale, settings=settings)
    json_path, table_path = write_results(output, options.subset, {chosen: metrics})
    typer.echo(table_path.read_text(encoding="utf-8"))
    typer.echo(f"variant {chosen}: results in {json_path} and {table_path}; generations in {settings.generations}")


@user_errors
def baselines_command(
    dataset: DatasetOpt,
    output: OutputOpt,
    subset: SubsetOpt = None,
    revision: RevisionOpt = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma-separated: random,popularity,sasrec,shown (default: all four).")
    ] = None,
    limit: LimitOpt = None,
    split: SplitOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the random baseline and of SASRec.")] = None,
    sasrec_epochs: Annotated[
        int | None, typer.Option("--sasrec-epochs", help="Most training epochs of SASRec (early stopping usually ends sooner).", min=1)
    ] = None,
    sasrec_hidden: Annotated[int | None, typer.Option("--sasrec-hidden", help="Embedding and hidden size of SASRec.", min=1)] = None,
    sasrec_blocks: Annotated[int | None, typer.Option("--sasrec-blocks", help="Self-attention blocks of SASRec.", min=1)] = None,
    sasrec_max_len: Annotated[int | None, typer.Option("--sasrec-max-len", help="Longest history SASRec reads.", min=1)] = None,
    sasrec_lr: Annotated[float | None, typer.Option("--sasrec-lr", help="Adam learning rate of SASRec.", min=0.0)] = None,
    sasrec_batch_size: Annotated[int | None, typer.Option("--sasrec-batch-size", help="Sequences per SASRec step.", min=1)] = None,
    sasrec_loss: Annotated[
        str | None, typer.Option("--sasrec-loss", help="bce: one sampled negative (default, the reference); ce: softmax over the catalog.")
    ] = None,
    sasrec_patience: Annotated[
        int | None, typer.Option("--sasrec-patience", help="Validation checks without gain before SASRec stops (0: never).", min=0)
    ] = None,
    config: ConfigOpt = None,
    settings_file: SettingsOpt = None,
) -> None:
    """Evaluate the random, popularity, SASRec and shown baselines.

    Each learns from every user's sequence except the validation and test targets (train rows
    plus the validation rows' histories) and ranks exactly the candidates of the evaluated split
    (SASRec early-stops on the validation split). `shown` scores only whether the student prompt
    lists a candidate: it must sit at chance.
    """
    from core.cli_common import settings_for
    from training.baselines import BaselineSettings, run_baselines
    from training.metrics import write_results

    options = dataset_options(subset, config, settings_file)
    settings, _ = settings_for(
        options.config_file,
        "baselines",
        BaselineSettings,
        methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
        limit=limit,
        split=split,
        seed=seed,
        sasrec_epochs=sasrec_epochs,
        sasrec_hidden=sasrec_hidden,
        sasrec_blocks=sasrec_blocks,
        sasrec_max_len=sasrec_max_len,
        sasrec_lr=sasrec_lr,
        sasrec_batch_size=sasrec_batch_size,
        sasrec_loss=sasrec_loss,
        sasrec_patience=sasrec_patience,
    )
    results = run_baselines(dataset, options.subset, revision, settings)
    json_path, table_path = write_results(output, options.subset, results)
    typer.echo(table_path.read_text(encoding="utf-8"))
    typer.echo(f"results in {json_path} and {table_path}")
