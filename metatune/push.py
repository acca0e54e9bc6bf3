"""`metatune push RUN REPO_ID`: a saved run to a model repository on the Hugging Face Hub.

The token comes from the environment (HF_TOKEN, or TOKEN_HUGGING_FACE as the dataset download reads
it; a .env file is honoured) and is never printed. With HF_HUB_OFFLINE set, or no token, it fails at
once, before anything is sent.
"""

from __future__ import annotations

import os
from pathlib import Path

from metatune.errors import MetatuneError

TOKEN_VARIABLES = ("HF_TOKEN", "TOKEN_HUGGING_FACE", "HUGGING_FACE_HUB_TOKEN")
NOT_UPLOADED = ["eval-*/predictions.jsonl", "*.tmp", ".*"]  # predictions can quote whole documents


def hub_token() -> str | None:
    from dotenv import load_dotenv

    load_dotenv()
    return next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


def push(run_dir: Path, repo_id: str, private: bool = False, message: str | None = None, *, card=None) -> str:
    """Creates the repository if needed and uploads the run; returns the repository's URL.
    `card`: a card.Describe, to write the card of a run saved before cards existed."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from metatune.card import write_card
    from metatune.export import read_run_info

    read_run_info(run_dir)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise MetatuneError(f"{repo_id!r}: not a Hub repository id (owner/name): {str(e).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise MetatuneError(f"{repo_id!r}: give the repository as owner/name")
    if HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise MetatuneError("cannot push: HF_HUB_OFFLINE is set (this machine is offline for the Hub)")
    token = hub_token()
    if token is None:
        raise MetatuneError(f"cannot push: no Hugging Face token (set {' or '.join(TOKEN_VARIABLES[:2])})")
    if card is not None and not (Path(run_dir) / "README.md").is_file():
        write_card(run_dir, card)  # a run saved before model cards existed
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(run_dir),
            repo_id=repo_id,
            repo_type="model",
            commit_message=message or f"Upload {Path(run_dir).name} with metatune",
            ignore_patterns=NOT_UPLOADED,
        )
    except Exception as e:  # noqa: BLE001 - network, permission, quota: one line, never the token
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MetatuneError(f"cannot push to {repo_id}: {detail.replace(token, '***')}") from None
    return str(url)
