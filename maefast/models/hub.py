"""Checkpoints by Hugging Face Hub id ("owner/name", optionally "owner/name@revision").

A local path always wins: a string that names an existing file or folder is used as it is. Anything
else of the form owner/name is fetched with huggingface_hub (optional: `pip install "maefast[hub]"`),
which keeps its own cache; with HF_HUB_OFFLINE=1 it answers from that cache only.
"""
from __future__ import annotations

import re
from pathlib import Path

from maefast.errors import MissingDependency, UserInputError

# owner/name[@revision]: the name is not "." or ".."; a revision (branch, tag, commit, refs/pr/N) has no empty,
# "." or ".." part, so neither can name a folder outside huggingface_hub's cache
_PART = r"(?!\.\.?(?:/|$))[\w.-]+"  # a path part that is not "." or ".."
HUB_ID = re.compile(rf"^(?P<repo>[A-Za-z0-9][\w.-]*/{_PART})(@(?P<revision>{_PART}(?:/{_PART})*))?$")
# what a checkpoint folder may hold: weights (safetensors or pickle under any of these names) and configs
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt"]


def is_hub_id(source) -> bool:
    return isinstance(source, str) and not Path(source).exists() and HUB_ID.match(source) is not None


def download(hub_id: str, revision: str | None = None, cache_dir=None, local_files_only: bool = False,
             token: str | bool | None = None) -> Path:
    """The local folder of a Hub checkpoint (downloaded, or found in huggingface_hub's cache). revision, cache_dir,
    local_files_only and token are huggingface_hub's (revision: a branch, tag or commit; "owner/name@v1" names
    one too)."""
    match = HUB_ID.match(hub_id)
    if match is None:
        raise UserInputError(f"{hub_id!r} is not a Hugging Face Hub id (owner/name or owner/name@revision)")
    try:
        import huggingface_hub
    except ImportError:
        raise MissingDependency(f"{hub_id!r} is not a local path, and loading it from the Hugging Face Hub "
                                f"needs huggingface_hub: python -m pip install \"maefast[hub]\" (or download the "
                                f"folder and pass its path)") from None
    repo = match["repo"]
    if match["revision"] and revision and match["revision"] != revision:
        raise UserInputError(f"{hub_id!r} names revision {match['revision']!r}, and revision={revision!r} another")
    revision = revision or match["revision"]
    try:
        folder = huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES,
                                                   cache_dir=cache_dir, local_files_only=local_files_only,
                                                   token=token)
    except Exception as error:  # network, authentication, missing repo or revision, offline without a cached copy
        raise OSError(f"could not get {hub_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
                      f"Offline: download the folder on a machine with network access (hf download {repo} "
                      f"--local-dir DIR) and pass DIR, or set HF_HUB_OFFLINE=1 to use a copy already in the "
                      f"huggingface_hub cache") from error
    return Path(folder)


def resolve(source, **hub_options):
    """A path for a local checkpoint or a Hub id (hub_options: download's); state dicts and other objects pass
    through."""
    if is_hub_id(source):
        return download(source, **hub_options)
    return source
