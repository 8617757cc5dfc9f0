"""Sharing adapters on the Hugging Face Hub: `adaptkit push`, and Hub ids wherever an adapter is accepted.

An adapter folder is already what a Hub model repo holds (PEFT's files, `adaptkit.json`, prompt
embeddings, a model card). Pushing is `create_repo` + `upload_folder` of exactly those files (plus
the evaluation grid and training curve found beside the adapter; never checkpoints or caches).
Pulling is `snapshot_download` into the standard cache, so a pulled adapter works offline
afterwards (`HF_HUB_OFFLINE=1`). An adapter is safetensors and JSON only: a repo holding pickles or
code is refused, naming the file, before anything is downloaded or loaded.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from adaptkit.card import Evaluation, build_card
from adaptkit.errors import AdaptkitError
from adaptkit.record import ADAPTER_META_FILE, AdapterMeta, is_hub_id

#: File kinds that can run code when loaded (pickles) or are code: never pulled as part of an adapter.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz",
                   ".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".sh", ".ipynb")

#: What a pushed adapter repo holds, from the adapter folder.
ADAPTER_SUFFIXES = (".json", ".safetensors", ".md")

_REF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


class HubError(AdaptkitError, ValueError):
    """A Hub operation that cannot go ahead as asked: the message says what to do."""


def split_ref(ref: str) -> tuple[str, str | None]:
    """`owner/name` or `owner/name@revision` -> (repo id, revision or None)."""
    match = _REF.match(ref)
    if not match:
        raise HubError(f"{ref!r} is neither a local adapter folder nor a Hub repo id (owner/name[@revision])")
    return match["repo"], match["revision"]


def is_hub_ref(ref: str | Path) -> bool:
    """Whether an argument names a Hub repo (`owner/name[@revision]`) rather than a local path."""
    text = str(ref)
    return not Path(text).expanduser().exists() and bool(_REF.match(text)) and is_hub_id(text.split("@")[0])


def refuse_unsafe(ref: str, files: Iterable[str]) -> None:
    """Raise before loading if a repo holds a pickle or code file (an adapter never needs one)."""
    unsafe = sorted(f for f in files if f.lower().endswith(UNSAFE_SUFFIXES))
    if unsafe:
        raise HubError(f"refusing {ref}: it holds {unsafe[0]}"
                       f"{f' (and {len(unsafe) - 1} more)' if len(unsafe) > 1 else ''}, a pickle or code file. "
                       "adaptkit loads adapters from safetensors and JSON only, never pickles or code.")


def download_adapter(ref: str) -> Path:
    """A Hub adapter repo (`owner/name[@revision]`) as a local folder in the standard Hub cache.

    Online, the repo's file list is checked first (pickles or code: refused, nothing downloaded); offline
    (`HF_HUB_OFFLINE=1`, or no network) the cached snapshot is used, and its files are checked too.
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    repo_id, revision = split_ref(ref)
    if not constants.is_offline_mode():
        try:
            # one request, no retries (an unreachable Hub falls back to the cache at once); siblings list every file
            files = [sibling.rfilename for sibling in HfApi().model_info(repo_id, revision=revision).siblings or []]
        except RepositoryNotFoundError:
            raise HubError(f"{ref}: no such model repo on the Hub (if it is private, log in with `hf auth login` "
                           "or set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise HubError(f"{ref}: the repo has no revision {revision!r}") from None
        except Exception:  # the Hub is unreachable (HTTP or transport errors): the cached snapshot is used below
            files = []
        refuse_unsafe(ref, files)
    try:
        folder = Path(snapshot_download(repo_id, revision=revision))
    except Exception as error:  # huggingface_hub raises many kinds here; all mean "not available here"
        raise HubError(f"{ref}: not in the local Hub cache and the Hub is not reachable ({type(error).__name__}); "
                       f"pull it once with network (adaptkit predict {ref} ...), or pass a local folder") from None
    refuse_unsafe(ref, (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
    return folder


# -------------------------------------------------------------------- push
def _check_repo_id(repo_id: str) -> None:
    kind = re.match(r"^(?:https?://[^/]+/)?(datasets|spaces)/", repo_id)
    if kind:
        raise HubError(f"{repo_id}: that names a {kind[1][:-1]} repo; an adapter is a model repo: give owner/name")
    if not _REF.match(repo_id) or "@" in repo_id:
        raise HubError(f"{repo_id!r} is not a Hub repo id: give owner/name (branch with --revision)")


def run_evaluations(run: Path) -> tuple[list[Evaluation], dict[str, Path]]:
    """Evaluations of this adapter found in its run folder (`adaptkit eval` writes `eval-SPLIT/`), and the
    pictures worth showing: the first evaluation's grid and the training curve."""
    evaluations, pictures = [], {}
    for folder in sorted(run.glob("eval*")):
        record = folder / "metrics.json"
        if not record.is_file():
            continue
        data = json.loads(record.read_text())
        if not data.get("split"):  # not an evaluation of this adapter on a named split (e.g. a zero-shot baseline)
            continue
        evaluations.append(Evaluation(data["split"], data["metrics"], data.get("images"), data.get("dataset", "")))
        if (folder / "grid.png").is_file() and "grid" not in pictures:
            pictures["grid"] = folder / "grid.png"
    if (run / "curve.png").is_file():
        pictures["curve"] = run / "curve.png"
    return evaluations, pictures


def stage_adapter(adapter: Path, staging: Path, repo_id: str) -> list[str]:
    """Copy what a repo should hold into `staging` and write the refreshed card; return the paths staged."""
    meta = AdapterMeta.load(adapter)
    staged = []
    for path in sorted(adapter.iterdir()):
        if path.is_file() and path.suffix in ADAPTER_SUFFIXES and path.name != "README.md":
            shutil.copy2(path, staging / path.name)
            staged.append(path.name)
    evaluations, pictures = run_evaluations(adapter.parent)
    images = {}
    for kind, picture in pictures.items():
        name = "curve.png" if kind == "curve" else f"{picture.parent.name}/{picture.name}"
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(picture, staging / name)
        images[kind] = name
        staged.append(name)
    sweep = json.loads((adapter / ADAPTER_META_FILE).read_text()).get("sweep")
    build_card(meta, evaluations, images, repo_id, sweep).save(staging / "README.md")
    return [*staged, "README.md"]


def push(adapter: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         message: str | None = None, token: str | None = None) -> str:
    """Create the model repo if needed and upload the adapter (one commit); return the repo and commit URLs.

    The token comes from `token`, else the usual places (`HF_TOKEN`, the cached `hf auth login`).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder: give an adapter folder (runs/NAME/adapter, or a sweep's best/)")
    for required in (ADAPTER_META_FILE, "adapter_config.json", "adapter_model.safetensors"):
        if not (folder / required).is_file():
            raise HubError(f"{folder} is not an adapter folder: {required} is missing")
    _check_repo_id(repo_id)
    name = AdapterMeta.load(folder).name
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with tempfile.TemporaryDirectory() as staging:
            stage_adapter(folder, Path(staging), repo_id)
            info = api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model", revision=revision,
                                     commit_message=message or f"Upload adaptkit adapter {name}")
    except HFValidationError as error:
        raise HubError(f"{repo_id!r} is not a valid Hub repo id: {error}") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo_id}: the repo cannot be created or reached with this token (check the owner name "
                       "and that the token may write to it)") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise HubError(f"{repo_id}: no permission to write there with this token (HTTP {status}); use a token "
                           "with write access to that owner") from None
        raise HubError(f"{repo_id}: the Hub refused the upload: {str(error).splitlines()[0]}") from None
    return f"{url} ({info.commit_url})"
