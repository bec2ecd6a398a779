"""Where the InternVL checkpoint of ``DOCPROC_MODEL`` is loaded from, decided before any
download starts, so a model that cannot be had fails in well under a second instead of
after transformers' Hub retries (about 30 s without a network):

* a local directory: loaded from it, ``local_files_only`` (the Hub is never asked);
* a name that is no Hub id (``/models/x``, ``./x``): a missing local directory, at once;
* a Hub id already in the local cache (``HF_HOME``): loaded from the cache, ``local_files_only``;
* a Hub id not cached, with ``HF_HUB_OFFLINE`` set: unavailable, at once;
* a Hub id not cached: one quick request to the Hub (``model_info``, no retries); a Hub out
  of reach, or no such model, is ``model_unavailable`` at once; otherwise transformers
  downloads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from docproc.base.errors import ModelUnavailable

HUB_PROBE_TIMEOUT_S = 10.0

_ADVICE = ("Set DOCPROC_MODEL to a local directory holding an InternVL checkpoint in the native "
           "transformers format, or to a Hub id such as OpenGVLab/InternVL3-1B-hf that this machine can "
           "download (or has in its Hugging Face cache).")


@dataclass(frozen=True)
class ModelSource:
    source: str  # what to pass to from_pretrained
    tried: str  # what was tried, for the error message
    local_only: bool  # from_pretrained(local_files_only=...): no network


def resolve(model: str, revision: str | None = None) -> ModelSource:
    """The source of ``model`` (see the module docstring); ModelUnavailable when there is none."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource(str(path), f"the local directory {path.resolve()}", True)
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ModelUnavailable(f"cannot load the InternVL model DOCPROC_MODEL={model!r}: tried the local directory "
                               f"{str(path)!r}, which does not exist (and the name is not a Hugging Face Hub id). "
                               + _ADVICE, model=model) from None
    tried = f"no local directory {str(path)!r}, then the Hugging Face Hub id {model!r}"
    if isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str):
        return ModelSource(model, tried + " (found in the local Hugging Face cache)", True)
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(f"cannot load the InternVL model DOCPROC_MODEL={model!r}: tried {tried}, which is not "
                               "in the local Hugging Face cache, and HF_HUB_OFFLINE is set. " + _ADVICE, model=model)
    _probe_hub(model, revision, tried)
    return ModelSource(model, tried, False)


def _probe_hub(model: str, revision: str | None, tried: str) -> None:
    """One request to the Hub: raise at once when it is out of reach or has no such model."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    try:
        HfApi().model_info(model, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except GatedRepoError:
        return  # the download says what access it needs
    except RepositoryNotFoundError:
        raise ModelUnavailable(f"cannot load the InternVL model DOCPROC_MODEL={model!r}: tried {tried}: the Hub has "
                               "no such model (or it is private). " + _ADVICE, model=model) from None
    except HfHubHTTPError:
        return  # rate limits, revisions ...: the download reports them in full
    except Exception as exc:  # noqa: BLE001 - DNS, refused connection, timeout: the Hub is out of reach
        raise ModelUnavailable(f"cannot load the InternVL model DOCPROC_MODEL={model!r}: tried {tried}: the Hub "
                               f"cannot be reached ({type(exc).__name__}) and the model is not in the local "
                               "Hugging Face cache. " + _ADVICE, model=model) from None
