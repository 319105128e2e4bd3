"""``--push-to-hub ORG/NAME``: publish a trained model folder with a model card naming its data.

The card (``README.md``) carries Hub metadata (``base_model``, ``datasets``, ``library_name``,
``tags``) and says exactly which released dataset version, subset and commit the model was
trained on, with the variant, the student prompt version and the evaluation losses, all read
from the folder's ``training_config.json``. Checkpoints are not pushed. The token comes from
``HF_TOKEN`` (or a ``hf auth login`` token) and is never printed or written; ``HF_ENDPOINT``
selects the Hub, as for ``rrec release --push``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from training.models import BASE_MODEL_DIR, TRAINING_CONFIG, read_training_config

log = logging.getLogger(__name__)

MODEL_CARD = "README.md"
_SKIPPED = ["checkpoints/**", "runs/**", ".cache/**"]


def model_card(record: dict[str, Any]) -> str:
    """The model card of a trained folder from its training record (``training_config.json``)."""
    source = record.get("dataset", {})
    dataset_line = f"`{source.get('dataset')}`, subset `{source.get('config')}`, version `{source.get('revision')}`" + (
        f" (commit `{source['commit']}`)" if source.get("commit") else ""
    )
    metadata: dict[str, Any] = {
        "library_name": "peft" if record.get("adapter") else "transformers",
        "tags": ["rationale-rec", "recommendation", "rationale-first", str(record.get("stage", "sft"))],
    }
    base = record.get("base_model")
    if base and base != BASE_MODEL_DIR and "/" in base and not Path(base).exists():
        metadata["base_model"] = base
    if source.get("kind") == "hub" and source.get("dataset"):
        metadata["datasets"] = [source["dataset"]]
    losses = {key: record.get(key) for key in ("eval_loss_after", "eval_item_loss", "eval_rationale_loss") if record.get(key) is not None}
    lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=True).strip(),
        "---",
        "",
        f"# rationale-rec {record.get('stage', 'sft').upper()} model, variant {record.get('variant')}",
        "",
        "A rationale-first sequential recommender: it answers `<think>rationale</think><item>title</item>`.",
        "",
        f"- Trained on: {dataset_line}.",
        f"- Variant: {record.get('variant')} (trained {'with' if record.get('with_rationale', True) else 'without'} rationales).",
        f"- Base model: `{base}`; student prompt `{record.get('prompt_version')}`, output format `{record.get('format_version')}`.",
        f"- Rows: {json.dumps(record.get('rows', {}), sort_keys=True)}.",
    ]
    if losses:
        lines.append(f"- Evaluation losses: {json.dumps(losses, sort_keys=True)}.")
    lines += ["", f"The full training record is `{TRAINING_CONFIG}` in this repository.", ""]
    return "\n".join(lines)


def check_push_target(repo_id: str) -> None:
    """Fail before training when a push could not happen: a malformed repo id or no token."""
    from huggingface_hub import get_token

    if repo_id.count("/") != 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ValueError(f"--push-to-hub {repo_id!r} is not of the form ORG/NAME")
    if get_token() is None:
        raise ValueError("no Hugging Face token: set HF_TOKEN to a token with write access and retry the push")


def push_model(model_dir: Path, repo_id: str, private: bool = False) -> str:
    """Push a trained model folder (adapter or full model, tokenizer, record, card) to the Hub model repo ``repo_id``.

    Writes the model card into the folder first. Returns the commit id. Raises ``ValueError``
    with one actionable line when there is no token, the token is rejected, or the Hub fails.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    record = read_training_config(model_dir)
    if not record:
        raise ValueError(f"{model_dir} has no {TRAINING_CONFIG}: push a folder written by `rrec train sft` or `rrec train grpo`")
    check_push_target(repo_id)
    (model_dir / MODEL_CARD).write_text(model_card(record), encoding="utf-8")
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=model_dir,
            repo_type="model",
            ignore_patterns=_SKIPPED,
            commit_message=f"{record.get('stage', 'sft')} variant {record.get('variant')} on {record.get('dataset', {}).get('revision')}",
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        raise ValueError(
            f"pushing {model_dir} to {repo_id} at {api.endpoint}: the Hub answered {status}; check HF_TOKEN's write access"
        ) from None
    except OSError as error:
        raise ValueError(f"pushing {model_dir} to {repo_id}: cannot reach the Hub at {api.endpoint} ({type(error).__name__})") from None
    log.info("pushed %s to %s (commit %s)", model_dir, repo_id, commit.oid)
    return commit.oid
