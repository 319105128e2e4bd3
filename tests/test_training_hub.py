"""`rrec train sft --push-to-hub`: a trained model and its card reach the Hub (a loopback server) and load back.

`huggingface_hub` reads `HF_ENDPOINT` when imported, so the push runs the real `rrec` command in
a fresh process pointed at the loopback Hub, as a user's shell would (see test_hub_roundtrip.py).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_loopback import LoopbackHub
from release_fixture import make_release

REPO = Path(__file__).resolve().parent.parent
TOKEN = f"hf_loopback_{secrets.token_hex(12)}"
MODEL_REPO = "rrec-tests/tiny-recommender"


def _env(hub: LoopbackHub, home: Path, cache: Path, token: str | None = TOKEN) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        RREC_CACHE=str(cache),
        PYTHONPATH=str(REPO),
        NO_PROXY="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _rrec(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    rrec = Path(sys.executable).parent / "rrec"
    return subprocess.run([str(rrec), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_push_to_hub_publishes_the_model_with_a_card_naming_the_dataset_version(tmp_path) -> None:
    release = make_release(tmp_path / "registry", n_users=12, with_git_tag="v1.0.0", annotated_splits=("train", "validation"))
    train = ["train", "sft", "--dataset", str(release), "--subset", "grocery", "--revision", "v1.0.0", "--model", "tiny"]
    train += ["--tiny-vocab-size", "400", "--max-steps", "1", "--eval-steps", "1"]
    with LoopbackHub(token=TOKEN) as hub:
        env = _env(hub, tmp_path / "hf-home", tmp_path / "cache")
        run = _rrec(env, *train, "--output", str(tmp_path / "model"), "--push-to-hub", MODEL_REPO)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"pushed to {MODEL_REPO}" in run.stdout
        assert TOKEN not in run.stdout + run.stderr

        files = hub.repo("model", MODEL_REPO).resolve("main").files
        card = files["README.md"].decode()
        assert "version `v1.0.0`" in card and "subset `grocery`" in card and "variant A" in card
        assert {"adapter_config.json", "training_config.json", "tokenizer.json", "base_model/config.json"} <= set(files)
        assert not any(path.startswith("checkpoints/") for path in files)
        assert all(TOKEN.encode() not in content for content in files.values())

        # A user downloads the model and runs it: the adapter finds its base inside the repository.
        download = tmp_path / "downloaded"
        code = f"from huggingface_hub import snapshot_download; snapshot_download({MODEL_REPO!r}, local_dir={str(download)!r})"
        fetched = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        check = textwrap.dedent(
            f"""
            from pathlib import Path
            from training.models import load_for_inference
            model, tokenizer = load_for_inference(Path({str(download)!r}))
            print(model.config.model_type)
            """
        )
        loaded = subprocess.run([sys.executable, "-c", check], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert loaded.returncode == 0 and "gemma3_text" in loaded.stdout, loaded.stderr[-3000:]

        # Without a token: one clear line before any training, exit status 2, nothing pushed.
        no_token = _rrec(_env(hub, tmp_path / "hf-home-2", tmp_path / "cache", token=None), *train,
                         "--output", str(tmp_path / "model-2"), "--push-to-hub", "rrec-tests/other")  # fmt: skip
        assert no_token.returncode == 2 and "no Hugging Face token" in no_token.stderr and "Traceback" not in no_token.stderr
        assert hub.repo("model", "rrec-tests/other") is None and not (tmp_path / "model-2").exists()
