"""LoRAs on the Hugging Face Hub by repo id (`--lora owner/name[:STRENGTH]`, or owner/name/FILE.safetensors): the
commands that may download fetch a LoRA the cache does not hold, its .safetensors files only; reading one never
downloads (core/lora_request.py reads it from the cache)."""

from __future__ import annotations

from .errors import InvalidRequest
from .lora_request import cached_hub_lora, hub_lora, lora_requests
from .sources import download_files


def fetch_loras(requests, allow_download: bool, say=None) -> list[str]:
    """Fetch each requested LoRA that names a repository the cache lacks (with the network allowed); the repos
    fetched. Without the network, nothing: reading it says what is missing."""
    fetched = []
    for request in lora_requests(requests):
        hub = hub_lora(request.path)
        if hub is None or not allow_download or cached_hub_lora(*hub) is not None:
            continue
        repo_id, file = hub
        if say is not None:
            say(f"downloading the LoRA {request.path} ...")
        download_files(repo_id, [file] if file else _top_level_safetensors(repo_id))
        if cached_hub_lora(*hub) is None:
            raise InvalidRequest(f"{request.path}: the Hub's repository holds no " + (file or ".safetensors file"))
        fetched.append(str(request.path))
    return fetched


def _top_level_safetensors(repo_id: str) -> list[str]:
    """The .safetensors files at the top of the repository (a model repository given by mistake holds its weights
    in component folders: they are not fetched); the pattern for all of them when the Hub will not list them (the
    download then says why)."""
    from huggingface_hub import HfApi

    try:
        names = [f.rfilename for f in HfApi().model_info(repo_id, revision="main").siblings or []]
    except Exception:
        return ["*.safetensors"]
    top = [name for name in names if "/" not in name and name.endswith(".safetensors")]
    if not top:
        raise InvalidRequest(f"{repo_id}: no .safetensors file at the top of the repository; name one as "
                             f"{repo_id}/PATH.safetensors")
    return top

