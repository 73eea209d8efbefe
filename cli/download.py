"""quantbench download: fetch a model into the Hugging Face cache once, without generating (the workbench never
downloads)."""

from __future__ import annotations

import argparse
import shlex

from quantbench.core.builtin import is_builtin_model
from quantbench.core.disk_space import folder_bytes
from quantbench.core.errors import InvalidRequest
from quantbench.core.lora import read_lora
from quantbench.core.lora_hub import fetch_loras
from quantbench.core.lora_request import hub_lora
from quantbench.core.memory import format_bytes
from quantbench.core.pipelines import model_defaults
from quantbench.core.sources import NotDownloaded, catalog_repo_id, resolve_model_folder, user_path

from . import arguments
from .output import emit, progress


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("download", help="fetch a model (or a LoRA) into the Hugging Face cache, without "
                                               "generating",
                              description="Fetch a model's files (model_index.json and its components' configs, "
                                          "weights and tokenizers, nothing else the repo holds) into the Hugging "
                                          "Face cache (HF_HUB_CACHE), so that generate, the lab and the workbench "
                                          "run it offline. Refused before anything is fetched when the cache "
                                          "cannot be written, or its disk lacks the room for the files the Hub "
                                          "lists. An interrupted download is finished by the next "
                                          "one; a complete cached model is not asked of the Hub again. A LoRA by "
                                          "repo id (--lora) is fetched the same way, its .safetensors files only.")
    p.add_argument("--model", type=arguments.text("model"), help=arguments.MODEL_HELP)
    p.add_argument("--lora", action="append", default=[], type=arguments.lora, metavar="REPO",
                   help="a LoRA on the Hub (owner/name, or owner/name/FILE.safetensors for one of several): its "
                        ".safetensors files at the top of the repository (repeat for several; give --model, "
                        "--lora or both)")
    p.add_argument("--json", action="store_true", help="print JSON (the folder, its bytes, whether it was fetched)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.model is None and not args.lora:
        raise InvalidRequest("download needs --model, --lora or both")
    if args.quiet:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    loras = [_lora(request, args.quiet) for request in args.lora]
    if args.model is None:
        emit({"loras": loras}, args.json, [_lora_line(lora) for lora in loras])
        return 0
    summary, lines = _model(args)
    emit({**summary, **({"loras": loras} if args.lora else {})}, args.json,
         lines + [_lora_line(lora) for lora in loras])
    return 0


def _lora(request, quiet: bool) -> dict:
    """Fetch a LoRA named by repo id (a file or folder on disk is refused: nothing to fetch)."""
    if hub_lora(request.path) is None:
        raise InvalidRequest(f"{request.path}: not a LoRA on the Hub (owner/name): a file on disk needs no download")
    fetched = bool(fetch_loras([request], True, lambda message: progress(message, quiet)))
    file = read_lora(request.path).path
    return {"lora": str(request.path), "file": str(file), "bytes": file.stat().st_size, "downloaded": fetched}


def _lora_line(lora: dict) -> str:
    state = "downloaded" if lora["downloaded"] else "already"
    return (f"{lora['lora']}: a LoRA, {state} in the Hugging Face cache ({format_bytes(lora['bytes'])}): "
            f"{lora['file']}; use it: --lora {shlex.quote(lora['lora'])}")


def _model(args: argparse.Namespace) -> tuple[dict, list[str]]:
    model = args.model
    on_disk = is_builtin_model(model) or user_path(model).exists()
    if on_disk:
        folder, fetched = resolve_model_folder(model), False
        source = "built in" if is_builtin_model(model) else "a folder"
    else:
        source = catalog_repo_id(model) or model
        try:
            folder, fetched = resolve_model_folder(model, allow_download=False), False
        except NotDownloaded:  # not cached, or only in part: fetch what is missing
            progress(f"downloading {source} ...", args.quiet)
            folder, fetched = resolve_model_folder(model, allow_download=True), True
    model_defaults(folder)  # a model no family runs is one line here, not at the first generate
    size = folder_bytes(folder)
    where = {"built in": "built in, nothing to download", "a folder": "a local folder, nothing to download"}.get(
        source, f"{source}, {'downloaded' if fetched else 'already'} in the Hugging Face cache")
    lines = [f"{model}: {where} ({format_bytes(size)}): {folder}"]
    if not on_disk:
        named = shlex.quote(model)
        lines.append(f"run it: quantbench generate --model {named} --prompt ... --out image.png, or in the "
                     f"workbench: quantbench --model {named}")
    return {"model": model, "source": source, "folder": str(folder), "bytes": size, "downloaded": fetched}, lines
