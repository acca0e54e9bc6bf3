"""Runs that explain themselves: model card, portable tokenizer files, `metatune push`,
training.report_to, `--version` and `--json` outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metatune.card import fix_tokenizer_class, model_card, record_evaluation
from metatune.errors import MetatuneError
from metatune.objectives import get
from metatune.run_info import RunInfo

from conftest import SAMPLE

INFO = {
    "metatune_version": "0.1.0",
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "architecture": "causal",
    "objective": "generate",
    "limits": {"max_input_tokens": 1024, "max_target_tokens": 256},
    "input": {
        "style": "prompt",
        "prompts": {"Tesis": {"prefix": "Extraé los metadatos de la tesis.\n\nDocumento:\n", "suffix": "\n\nJSON:\n"}},
    },
    "types": {"Tesis": {"fields": {"title": "string", "director": "array"}}},
    "config": {
        "data": {"path": "data/sample/sample.json"},
        "model": {"lora": {"enabled": True, "r": 16, "alpha": 32, "merge": True}},
        "training": {"learning_rate": 0.0002, "num_train_epochs": 3, "seed": 42},
    },
    "training": {"train_examples": 24, "train_loss": 0.81},
}
METRICS = {
    "documents": 4,
    "parse_failures": 1,
    "seconds": 2.0,
    "micro": {"strict": {"f1": 0.5}, "soft": {"f1": 0.625}},
    "macro": {"strict": {"f1": 0.4}, "soft": {"f1": 0.5}},
    "fields": {"title": {"strict": {"f1": 0.75}, "soft": {"f1": 1.0}}},
    "run": {"split": "test", "data": "data/sample/sample.json"},
}


def run_cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "metatune", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def card_of(info: dict, name: str, metrics: dict | None = None) -> str:
    run = RunInfo.model_validate(info)
    return model_card(run, name, get(run.objective).card(run, name), metrics)


def test_the_card_names_base_model_data_settings_prompt_and_how_to_load():
    card = card_of(INFO, "demo")
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card.split("---")[1]
    assert "* dataset: `data/sample/sample.json`" in card and "* training examples: 24" in card
    assert "| `training.learning_rate` | 0.0002 |" in card and "| `model.lora` | r=16, alpha=32, merged=True |" in card
    assert "Extraé los metadatos de la tesis.\n\nDocumento:\n{document}\n\nJSON:\n" in card
    assert "Not evaluated yet" in card
    assert "* input limit 1024 tokens (the document is truncated, never the instruction), output limit 256" in card
    assert 'model = AutoModelForCausalLM.from_pretrained("demo")' in card and "metatune extract demo" in card
    card = card_of(INFO, "demo", METRICS)
    assert (
        "| field | strict | soft |" in card
        and "| title | 75.0 | 100.0 |" in card
        and "| **micro** | 50.0 | 62.5 |" in card
    )


def test_a_tag_runs_card_names_only_the_limit_it_reads_with():
    # a tag run writes no tokens: no output limit, no instruction; windows where it reads several
    tag = INFO | {"objective": "tag", "input": {"style": "prompt"}, "tagging": {"windows": 1}}
    card = card_of(tag, "demo")
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: token-classification\n")
    assert "* input limit 1024 tokens (the document is cut there)\n" in card and "output limit" not in card
    card = card_of(tag | {"tagging": {"windows": 3}}, "demo")
    assert "* input limit 1024 tokens per window, up to 3 overlapping windows\n" in card


def test_the_saved_tokenizer_names_a_class_other_tools_know(tmp_path, tiny_tokenizer):
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "TokenizersBackend"
    fix_tokenizer_class(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("Tesis de grado, 2019")["input_ids"] == tiny_tokenizer("Tesis de grado, 2019")["input_ids"]


def test_a_saved_run_has_its_card_and_the_last_evaluation_joins_it(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    card = (run / "README.md").read_text(encoding="utf-8")
    assert f"# {tiny_run.name}" in card and "Not evaluated yet" in card  # the run's name, not its temporary one
    assert json.loads((run / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"

    result = run_cli("evaluate", run, "--data", SAMPLE, "--limit", "2", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # only the JSON on standard output; the tables went to standard error
    assert summary["documents"] == 2 and set(summary["micro"]) == {"strict", "soft", "levenshtein", "ratcliff"}
    assert "| field | strict |" in result.stderr
    card = (run / "README.md").read_text(encoding="utf-8")
    assert "The last `metatune evaluate`: 2 documents of the `test` split" in card
    assert json.loads((run / "evaluation.json").read_text())["micro"] == summary["micro"]

    record_evaluation(run, METRICS, get("generate").card)
    assert "| **micro** | 50.0 | 62.5 |" in (run / "README.md").read_text(encoding="utf-8")


# --- metatune push ---------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    """The Hub API with its network calls replaced: records what would be sent."""
    from huggingface_hub import HfApi

    sent = {}
    for var in ("HF_TOKEN", "TOKEN_HUGGING_FACE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("dotenv.load_dotenv", lambda *a, **k: False)

    def create_repo(self, repo_id, **kwargs):
        sent["token"], sent["create"] = self.token, (repo_id, kwargs)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        sent["upload"] = kwargs
        if kwargs["repo_id"].endswith("denied"):
            raise RuntimeError(f"403 Forbidden: token {self.token} cannot write")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return sent


def fake_run(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    (run / "metatune.json").write_text(json.dumps({"format_version": 1, **INFO}), encoding="utf-8")
    return run


def test_push_uploads_the_run_with_the_token_from_the_environment(tmp_path, hub, monkeypatch, capsys):
    from typer.testing import CliRunner

    from metatune.cli import app

    run = fake_run(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    result = CliRunner().invoke(app, ["push", str(run), "sedici/metatune-demo", "--private"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Pushed {run} to https://huggingface.co/sedici/metatune-demo"
    assert hub["token"] == "hf_secret" and hub["create"] == (
        "sedici/metatune-demo",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert hub["upload"]["folder_path"] == str(run) and hub["upload"]["repo_id"] == "sedici/metatune-demo"
    assert (run / "README.md").is_file()  # a run saved before cards existed gets one before the upload
    assert "hf_secret" not in result.output


def test_push_errors_are_one_line_and_never_show_the_token(tmp_path, hub, monkeypatch):
    from metatune.push import push

    run = fake_run(tmp_path)
    with pytest.raises(
        MetatuneError, match=r"^cannot push: no Hugging Face token \(set HF_TOKEN or TOKEN_HUGGING_FACE\)$"
    ):
        push(run, "sedici/demo")
    monkeypatch.setenv("TOKEN_HUGGING_FACE", "hf_secret")
    with pytest.raises(
        MetatuneError, match=r"^cannot push to sedici/denied: 403 Forbidden: token \*\*\* cannot write$"
    ):
        push(run, "sedici/denied")
    with pytest.raises(MetatuneError, match="give the repository as owner/name"):
        push(run, "demo")
    with pytest.raises(MetatuneError, match="not a metatune run"):
        push(tmp_path, "sedici/demo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetatuneError, match=r"^cannot push: HF_HUB_OFFLINE is set"):
        push(run, "sedici/demo")
    assert "upload" not in hub or hub["upload"]["repo_id"] == "sedici/denied"


# --- training.report_to, --version, --json ----------------------------------------------------------


def test_report_to_follows_the_setting():
    from metatune.config import load_config
    from metatune.training.hf_trainer import report_to

    assert report_to("none") == "none" and report_to("tensorboard") == ["tensorboard"]  # installed with dev
    with pytest.raises(MetatuneError, match=r"^training.report_to=wandb needs the wandb package \(pip install wandb\)"):
        report_to("wandb")
    assert load_config(sets=["training.report_to=mlflow"]).training.report_to == "mlflow"
    with pytest.raises(MetatuneError, match="report_to"):
        load_config(sets=["training.report_to=comet"])


def test_version_and_json_listings(tmp_path):
    from metatune import __version__

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"metatune {__version__}"
    presets = json.loads(run_cli("models", "--json", cwd=tmp_path).stdout)
    assert {"name": "led", "source": "allenai/led-base-16384"}.items() <= next(
        p for p in presets if p["name"] == "led"
    ).items()

    report = json.loads(run_cli("data", "validate", SAMPLE, "--json", cwd=tmp_path).stdout)
    assert report["ok"] is True and report["splits"]["training"]["records"] == 24
    assert report["splits"]["test"]["types"] == {"Tesis": 1, "Articulo": 1, "Libro": 1, "Objeto de conferencia": 1}
    data = json.loads(SAMPLE.read_text(encoding="utf-8"))
    del data["training"][0]["original_text"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    result = run_cli("data", "validate", bad, "--json", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {bad}: 1 problem(s) found"
    assert json.loads(result.stdout) == {
        "path": str(bad),
        "ok": False,
        "problems": [f"{bad}: record training[0]: field 'original_text': missing"],
    }
