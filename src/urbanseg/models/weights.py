"""Pretrained encoder weights, the one owner of `model.encoder_weights`: `imagenet` (fetched by the
libraries that define the encoder) or a local `.pth` / `.safetensors` file (for machines without
a network).

`imagenet` goes through the libraries' own loaders, so the files land in their usual caches:
smp's encoders come from the Hugging Face hub (`huggingface_hub.hf_hub_download`), timm's (`tu-`)
from the hub or a URL (`torch.hub.load_state_dict_from_url`), torchvision's from a URL.
What this module adds: without a network those loaders retry for ~25-40 s and end with their own
traceback. When the files are not cached yet, one TCP connection to the host (3 s timeout) decides
first, and any failure is one `ConfigError` line naming the key, what was fetched from where, and
the alternatives.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import urlsplit

import segmentation_models_pytorch as smp
import timm
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from ..files import read_torch_file

KEY = "model.encoder_weights"
PROBE_TIMEOUT = 3.0  # seconds for one TCP connection to the weights' host
ALTERNATIVES = "use null (random init) or the path of a local .pth/.safetensors file"
# OSError covers urllib (torch.hub) and most of huggingface_hub's errors; a transfer that fails
# mid-way raises the hub's HTTP client's own base error, which HfHubHTTPError derives from too.
NETWORK_ERRORS = (OSError, *(base for base in HfHubHTTPError.__bases__ if base is not OSError))


@dataclass(frozen=True)
class Download:
    """Where an encoder's ImageNet weights come from, and whether they are in the local cache."""

    encoder: str
    url: str  # a file URL, or the hub repository's URL
    cached: bool

    def failure(self, reason: str) -> ConfigError:
        return ConfigError(f"{KEY}: imagenet weights for encoder '{self.encoder}' are not in the local cache and "
                           f"could not be fetched from {self.url} ({reason}); {ALTERNATIVES}")


def hub_download(encoder: str, repo_id: str, filenames: Sequence[str], revision: Optional[str] = None,
                 need_all: bool = True) -> Download:
    """Files of a Hugging Face hub repository: cached if all of them (or, `need_all=False`, one
    of them: the loader takes the first that exists) are in the hub cache."""
    found = [isinstance(try_to_load_from_cache(repo_id, name, revision=revision), str) for name in filenames]
    return Download(encoder, f"{hub_constants.ENDPOINT}/{repo_id}", all(found) if need_all else any(found))


def url_download(encoder: str, url: str) -> Download:
    """A file that `torch.hub.load_state_dict_from_url` caches under `<torch hub dir>/checkpoints`."""
    cached = Path(torch.hub.get_dir(), "checkpoints", os.path.basename(urlsplit(url).path)).is_file()
    return Download(encoder, url, cached)


def smp_weights(encoder: str, weights: Optional[str]) -> Optional[str | bool]:
    """The `weights` argument of smp's `get_encoder` for `model.encoder_weights` (None for a local
    file, loaded afterwards): `tu-` encoders take True, smp's own take the weights' name."""
    if weights != "imagenet":
        return None
    return True if encoder.startswith("tu-") else weights


def encoder_download(encoder: str) -> Optional[Download]:
    """What smp's `get_encoder(encoder, weights=smp_weights(encoder, 'imagenet'))` fetches (None for
    names smp translates itself, e.g. the deprecated `timm-regnet*`: their loader runs unguarded)."""
    if encoder.startswith("tu-"):
        return timm_download(encoder)
    if encoder not in smp.encoders.encoders:
        return None
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]
    if "imagenet" not in settings:
        raise ConfigError(f"{KEY}: encoder '{encoder}' has no imagenet weights in segmentation-models-pytorch "
                          f"(it has {', '.join(settings)}); {ALTERNATIVES}")
    hub = settings["imagenet"]
    return hub_download(encoder, hub["repo_id"], ["config.json", "model.safetensors"], hub["revision"])


def timm_download(encoder: str) -> Download:
    """The source timm's `load_pretrained` picks for a `tu-<model>[.<tag>]` encoder: the hub if the
    model's pretrained config names a hub repository, else its URL."""
    name = encoder[3:]
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # an unknown pretrained tag
        raise ConfigError(f"model.encoder: '{encoder}': {error}") from None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"{KEY}: timm has no pretrained weights for '{name}'; {ALTERNATIVES}")
    if not cfg.hf_hub_id:
        return url_download(encoder, cfg.url)
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    # timm loads hf_hub_filename if set, else the first of these that the repository has
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    return hub_download(encoder, repo_id, filenames, revision or None, need_all=False)


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> Optional[str]:
    """Why `url`'s host (or the proxy for it) does not take a TCP connection; None if it does."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname or "", proxy_parts.port or 80
    outcome: list[Optional[str]] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"no connection to {host}:{port}: {error}")

    # in a thread because resolving the host name does not obey the socket's timeout
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:.0f} s"


@contextmanager
def fetching(download: Optional[Download]) -> Iterator[None]:
    """Run the library code that loads `download` (None: nothing to fetch) so that it fails fast
    and in one line: not cached and the host unreachable -> ConfigError before any retry loop;
    a network error while loading -> ConfigError naming what was fetched."""
    if download is None:
        yield
        return
    if not download.cached:
        reason = unreachable(download.url)
        if reason:
            raise download.failure(reason)
    try:
        yield
    except NETWORK_ERRORS as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise download.failure(f"{error.__class__.__name__}: {reason}" if reason else error.__class__.__name__) from error


def check_weights_spec(weights: object) -> None:
    """`model.encoder_weights` is None, 'imagenet' or a path (a string)."""
    if weights is not None and not isinstance(weights, str):
        raise ConfigError(f"{KEY}: expected imagenet, null or the path of a .pth/.safetensors file, got {weights!r}")


def load_local_weights(module: nn.Module, path: str, key: str = KEY) -> None:
    """Load a state dict from `.safetensors` or a torch file (never executing pickled code)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: '{path}' is neither 'imagenet' nor an existing weights file")
    if file.suffix == ".safetensors":
        state = load_file(str(file))
    else:
        try:
            state = read_torch_file(file)
        except Exception as error:  # unpickling errors vary by torch version
            raise ConfigError(f"{key}: {path} is not a loadable weights file ({error.__class__.__name__})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = module.state_dict()
    matching = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matching:
        raise ConfigError(f"{key}: no tensor in {path} matches the encoder's parameters")
    module.load_state_dict(matching, strict=False)
