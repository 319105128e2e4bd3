"""Base models for training and trained models for inference.

``--model`` names any Hub id or local folder of a causal LM with a chat template (default
``google/gemma-3-1b-it``). ``--model tiny`` builds a small model of the same family
(``Gemma3ForCausalLM``, ``gemma3_text``) from a config, with a byte-level BPE tokenizer trained
locally on the released texts, the rationale tags as whole tokens and a Gemma-style chat
template, so every command runs offline on a CPU in seconds.

Trained models are standard Hugging Face folders: either a PEFT adapter (``adapter_config.json``)
or a full model, each with its tokenizer and ``training_config.json`` (the settings, the base
model and the dataset version it came from).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel, PreTrainedTokenizerFast

from core.rationale_format import SPECIAL_TOKENS

log = logging.getLogger(__name__)

TINY = "tiny"
DEFAULT_MODEL = "google/gemma-3-1b-it"
TRAINING_CONFIG = "training_config.json"
BASE_MODEL_DIR = "base_model"

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"

# Gemma 3's template: the system turn is folded into the first user turn, the assistant speaks
# as "model", every turn ends with <end_of_turn>.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


class TinyModelSettings(BaseModel):
    """Size of the tiny offline model (``--model tiny``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(1024, ge=300, description="Target BPE vocabulary size (bytes + merges + special tokens).")
    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    max_positions: int = Field(2048, ge=64)


def train_tiny_tokenizer(texts: Iterable[str], settings: TinyModelSettings) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, with the chat and rationale tags as tokens.

    The chat markers are special (dropped by ``skip_special_tokens``); the rationale tags are
    ordinary added tokens, so decoded outputs keep them and can be parsed.
    """
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = [PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN]
    trainer = trainers.BpeTrainer(
        vocab_size=settings.vocab_size,
        special_tokens=[*special, *SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in special])
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in SPECIAL_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        # The end of an assistant turn is where generation must stop.
        eos_token=END_OF_TURN,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[START_OF_TURN, EOS],
        clean_up_tokenization_spaces=False,
        model_max_length=settings.max_positions,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, settings: TinyModelSettings, seed: int) -> Gemma3ForCausalLM:
    """A randomly initialised Gemma-3 text model sized by ``settings`` for ``tokenizer``."""
    head_dim = max(4, settings.hidden_size // settings.num_heads)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.hidden_size * 2,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=max(1, settings.num_heads // 2),
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=settings.max_positions,
        sliding_window=min(512, settings.max_positions),
        # Same interleaving idea as Gemma 3 (local layers, then a global one), at toy depth.
        layer_types=["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(settings.num_layers)],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def training_dtype() -> torch.dtype:
    """bfloat16 on a GPU that supports it, float32 otherwise (CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_pretrained(model_name: str) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer from a Hub id or local folder; the tokenizer must have a chat template."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=training_dtype())
    except OSError as exc:
        raise ValueError(f"cannot load model '{model_name}' (a Hub id or a local model folder, or 'tiny'): {exc}") from None
    if not tokenizer.chat_template:
        raise ValueError(f"model '{model_name}' has no chat template; use an instruction-tuned model (e.g. {DEFAULT_MODEL})")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def build_tiny(
    texts: Iterable[str], settings: TinyModelSettings, seed: int, save_to: Path
) -> tuple[Gemma3ForCausalLM, PreTrainedTokenizerFast]:
    """Train the tiny tokenizer, build the tiny model and save both to ``save_to`` (the adapter's base)."""
    tokenizer = train_tiny_tokenizer(texts, settings)
    model = build_tiny_model(tokenizer, settings, seed)
    save_to.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_to)
    tokenizer.save_pretrained(save_to)
    log.info("built the tiny model (%d parameters, vocabulary %d) in %s", model.num_parameters(), len(tokenizer), save_to)
    return model, tokenizer


def read_training_config(model_dir: Path) -> dict[str, Any]:
    """The ``training_config.json`` of a trained model folder ({} when it has none)."""
    path = Path(model_dir) / TRAINING_CONFIG
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_training_config(model_dir: Path, record: dict[str, Any]) -> None:
    (Path(model_dir) / TRAINING_CONFIG).write_text(json.dumps(record, indent=2, sort_keys=True, default=str), encoding="utf-8")


def write_run_record(
    model_dir: Path, stage: str, dataset: dict[str, Any], trainer: Any, resumed_from: str | None, fields: dict[str, Any]
) -> None:
    """The training record of an SFT or GRPO run: what both write alike (the dataset version
    read, prompt and format versions, steps, resume point) plus the stage's own ``fields``."""
    from core.rationale_format import FORMAT_VERSION
    from training.prompts import STUDENT_PROMPT_VERSION

    write_training_config(
        model_dir,
        {
            "stage": stage,
            **fields,
            "dataset": dataset,
            "prompt_version": STUDENT_PROMPT_VERSION,
            "format_version": FORMAT_VERSION,
            "global_step": trainer.state.global_step,
            "resumed_from": resumed_from,
        },
    )


def is_adapter(model_dir: Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").exists()


def adapter_base(model_dir: Path) -> str:
    """The base model of an adapter folder: its own ``base_model/`` copy, else the recorded Hub id or path."""
    model_dir = Path(model_dir)
    if (model_dir / BASE_MODEL_DIR / "config.json").exists():
        return str(model_dir / BASE_MODEL_DIR)
    recorded = read_training_config(model_dir).get("base_model")
    if recorded:
        return recorded
    return json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


def load_for_training(model_dir: Path) -> tuple[PreTrainedModel, Any]:
    """A trained folder ready to train further: an adapter stays a trainable PEFT model."""
    from peft import PeftModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists() and not is_adapter(model_dir):
        raise FileNotFoundError(
            f"{model_dir} is not a trained model folder (no adapter_config.json or config.json); run `rrec train sft` first"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if is_adapter(model_dir):
        base = AutoModelForCausalLM.from_pretrained(adapter_base(model_dir), dtype=training_dtype())
        return PeftModel.from_pretrained(base, model_dir, is_trainable=True), tokenizer
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=training_dtype()), tokenizer


def load_for_inference(model_dir: Path) -> tuple[PreTrainedModel, Any]:
    """A trained model folder (adapter or merged) and its tokenizer, in eval mode on the best device.

    An adapter is merged into its base for faster inference. The tokenizer pads on the left, as
    batched generation with a decoder-only model needs.
    """
    from peft import PeftModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists() and not is_adapter(model_dir):
        raise FileNotFoundError(f"{model_dir} is not a trained model folder (no adapter_config.json or config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_adapter(model_dir):
        base = AutoModelForCausalLM.from_pretrained(adapter_base(model_dir), dtype=training_dtype())
        model = PeftModel.from_pretrained(base, model_dir).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=training_dtype())
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer
