#!/usr/bin/env bash
# One short SFT + evaluation of a small real-architecture model on a GPU, recording tokens/s.
# Never required: CI and the CPU tests do not run it. Needs bash >= 5 (EPOCHREALTIME). Usage (from the repository root):
#
#   benchmarks/gpu_check.sh                     # Gemma-3-1B-shaped model, random weights
#   MODEL=/path/to/gemma-3-1b-it benchmarks/gpu_check.sh   # a local copy of real weights
#   MODEL=tiny STEPS=5 EVAL_LIMIT=4 benchmarks/gpu_check.sh  # smoke test on a CPU
#
# Without MODEL it builds a model with google/gemma-3-1b-it's architecture and sizes (26 layers,
# hidden 1152, 262k vocabulary) from a config, with the locally trained tokenizer, so it runs
# on a machine without Hub access; throughput is that of the real architecture, the quality is
# not (the weights are random). Results: $OUT/gpu_check.json and a line per phase on stdout.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
RREC=${RREC:-.venv/bin/rrec}
OUT=${OUT:-gpu-check-out}
MODEL=${MODEL:-}
STEPS=${STEPS:-40}
BATCH=${BATCH:-8}
EVAL_LIMIT=${EVAL_LIMIT:-32}
USERS=${USERS:-400}

mkdir -p "$OUT"
export RREC_CACHE="$OUT/cache"

echo "== release: $USERS synthetic users, 99 negatives per row"
"$PYTHON" - "$OUT/release" "$USERS" <<'EOF'
import sys
sys.path.insert(0, "tests")
from release_fixture import make_release
make_release(sys.argv[1], n_users=int(sys.argv[2]), num_negatives=99, with_git_tag="v1.0.0")
EOF

if [[ -z "$MODEL" ]]; then
  MODEL="$OUT/gemma3-1b-shaped"
  echo "== building a Gemma-3-1B-shaped model with random weights in $MODEL"
  "$PYTHON" - "$OUT/release" "$MODEL" <<'EOF'
import sys
from pathlib import Path
from transformers import Gemma3ForCausalLM, Gemma3TextConfig
from training.data import load_catalog, load_split
from training.models import TinyModelSettings, train_tiny_tokenizer
from training.prompts import PromptSettings
from training.sft import tokenizer_corpus

release, folder = sys.argv[1], Path(sys.argv[2])
rows = load_split(release, "grocery", "v1.0.0", "train")
tokenizer = train_tiny_tokenizer(tokenizer_corpus(rows, load_catalog(release, "grocery", "v1.0.0"), PromptSettings()), TinyModelSettings(vocab_size=4096))
# google/gemma-3-1b-it's text config (the embedding keeps the real 262,144 rows so the LM head
# costs what it costs in the real model; ids beyond the local tokenizer are never produced).
config = Gemma3TextConfig(
    vocab_size=262_144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
    num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
    sliding_window=512, max_position_embeddings=32_768, rope_theta=1_000_000.0,
    pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
)
model = Gemma3ForCausalLM(config)
model.generation_config.eos_token_id = tokenizer.eos_token_id
model.generation_config.pad_token_id = tokenizer.pad_token_id
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
print(f"{model.num_parameters() / 1e6:.0f}M parameters")
EOF
fi

"$PYTHON" -c "import torch; print('== device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU (no GPU visible)')"

echo "== SFT: $STEPS steps of $BATCH examples (variant A, LoRA)"
sft_start=$EPOCHREALTIME
"$RREC" train sft --dataset "$OUT/release" --subset grocery --revision v1.0.0 --output "$OUT/sft" \
  --model "$MODEL" --variant A --max-steps "$STEPS" --batch-size "$BATCH" --eval-steps "$STEPS" \
  --limit-eval 32 --early-stopping-patience 0
sft_end=$EPOCHREALTIME

echo "== evaluate: $EVAL_LIMIT test rows x 100 candidates (variant A)"
eval_start=$EPOCHREALTIME
"$RREC" evaluate --model "$OUT/sft" --dataset "$OUT/release" --subset grocery --revision v1.0.0 \
  --output "$OUT/results.json" --variant A --limit "$EVAL_LIMIT"
eval_end=$EPOCHREALTIME

"$PYTHON" - "$OUT" "$STEPS" "$BATCH" "$sft_start" "$sft_end" "$eval_start" "$eval_end" <<'EOF'
import json, sys
from pathlib import Path
import pyarrow.parquet as pq
import torch
from transformers import AutoTokenizer
from pipeline.rationale_format import ITEM_CLOSE, ITEM_OPEN
from training.data import load_split, to_chat_examples
from training.prompts import PromptSettings

out, steps, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sft_s = float(sys.argv[5]) - float(sys.argv[4])
eval_s = float(sys.argv[7]) - float(sys.argv[6])
tokenizer = AutoTokenizer.from_pretrained(out / "sft")
record = json.loads((out / "sft" / "training_config.json").read_text())
prompts = PromptSettings(**{k: record["settings"][k] for k in ("history_k", "num_candidates", "seed")})
train = to_chat_examples(load_split(str(out / "release"), "grocery", "v1.0.0", "train"), prompts, True).dataset
token_lengths = [len(tokenizer(tokenizer.apply_chat_template(e["prompt"] + e["completion"], tokenize=False), add_special_tokens=False)["input_ids"]) for e in train.select(range(min(64, len(train))))]
mean_tokens = sum(token_lengths) / len(token_lengths)
sft_tokens = steps * batch * mean_tokens
generations = pq.read_table(out / "results.A.generations.parquet").to_pylist()
generated = sum(len(tokenizer(g["generation"], add_special_tokens=False)["input_ids"]) for g in generations)
rows = load_split(str(out / "release"), "grocery", "v1.0.0", "test").select(range(len(generations)))
scored = sum(len(tokenizer(f"{ITEM_OPEN}{c['title']}{ITEM_CLOSE}", add_special_tokens=False)["input_ids"]) for r in rows for c in r["candidates"])
result = {
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    "model": record.get("base_model"),
    "sft": {"steps": steps, "batch_size": batch, "mean_example_tokens": round(mean_tokens, 1), "wall_s": round(sft_s, 1),
            "train_tokens_per_s_incl_startup": round(sft_tokens / sft_s, 1)},
    "evaluate": {"rows": len(generations), "wall_s": round(eval_s, 1), "generated_tokens": generated,
                 "candidate_tokens_scored": scored, "rows_per_s_incl_startup": round(len(generations) / eval_s, 3),
                 "tokens_per_s_incl_startup": round((generated + scored) / eval_s, 1)},
    "metrics": json.loads((out / "results.json").read_text()),
}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2))
print(json.dumps(result, indent=2))
EOF
