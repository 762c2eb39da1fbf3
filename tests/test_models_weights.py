"""`model.encoder_weights: imagenet` without a network: one ConfigError line at once, no retry loop;
weights already in the cache still load. The network is simulated: `socket.getaddrinfo` fails
(as on a machine without DNS) and counts its calls, so these tests behave the same online."""
import re
import socket
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file

from urbanseg.errors import ConfigError
from urbanseg.models import create_model, weights

# What the tests ask for: nothing is downloaded, `offline` below makes every name lookup fail
# (and the cached-weights test puts a local file where the hub cache would hold one).
IMAGENET = "imagenet"
ALTERNATIVES = re.escape("; use null (random init) or the path of a local .pth/.safetensors file")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty weight caches and no name resolution; returns the list of host names looked up."""
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    lookups = []

    def getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


HUB = re.escape(hub_constants.ENDPOINT)


@pytest.mark.parametrize("name, options, encoder, source", [
    ("unet", {"encoder": "resnet18"}, "resnet18", f"{HUB}/smp-hub/resnet18.imagenet"),
    ("unet", {"encoder": "tu-regnetx_002", "encoder_depth": 4, "decoder_channels": [64, 32, 32], "decoder_stride": 2},
     "tu-regnetx_002", f"{HUB}/timm/regnetx_002.pycls_in1k"),
    ("danet", {"encoder": "resnet18"}, "resnet18", f"{HUB}/smp-hub/resnet18.imagenet"),
    ("fcn_resnet50", {}, re.escape("resnet50 (torchvision)"),
     re.escape("https://download.pytorch.org/models/resnet50-11ad3fa6.pth")),
])
def test_offline_imagenet_weights_fail_at_once_in_one_line(offline, name, options, encoder, source):
    with pytest.raises(ConfigError) as error:
        create_model(name, 3, encoder_weights=IMAGENET, **options)
    assert re.fullmatch(f"model.encoder_weights: imagenet weights for encoder '{encoder}' are not in the local cache "
                        f"and could not be fetched from {source} \\(no connection to [^:]+:\\d+: .*Name or service "
                        f"not known\\){ALTERNATIVES}", str(error.value)), str(error.value)
    assert len(offline) == 1  # one connection attempt: no retry loop


def test_a_failing_download_after_the_probe_is_one_line_too(offline, monkeypatch):
    monkeypatch.setattr(weights, "unreachable", lambda url: None)  # the host answers; the transfer fails
    with pytest.raises(ConfigError, match=r"^model.encoder_weights: imagenet weights for encoder 'resnet50 "
                                          r"\(torchvision\)' .* \(URLError: .*Name or service not known.*\)"):
        create_model("fcn_resnet50", 3, encoder_weights=IMAGENET)
    assert len(offline) == 1  # urllib's one attempt
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # huggingface_hub refuses at once
    with pytest.raises(ConfigError, match=r"^model.encoder_weights: imagenet weights for encoder 'resnet18' .*"
                                          r"\(LocalEntryNotFoundError: .*\)" + ALTERNATIVES + "$"):
        create_model("unet", 3, encoder="resnet18", encoder_weights=IMAGENET)


def test_cached_imagenet_weights_load_offline(offline):
    """smp's hub files in the cache (here: a random encoder's weights) load without a connection."""
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = (Path(hub_constants.HF_HUB_CACHE) / f"models--{settings['repo_id'].replace('/', '--')}"
                / "snapshots" / settings["revision"])
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in create_model("unet", 3, encoder="resnet18").model.encoder.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    model = create_model("unet", 3, encoder="resnet18", encoder_weights=IMAGENET)
    assert torch.equal(model.model.encoder.conv1.weight, state["conv1.weight"])
    assert offline == []  # not even the probe


def test_unreachable_probes_one_tcp_connection():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    assert weights.unreachable(f"http://127.0.0.1:{port}/weights.pth") is None
    server.close()
    assert weights.unreachable(f"http://127.0.0.1:{port}/weights.pth").startswith(f"no connection to 127.0.0.1:{port}")


def test_weights_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.encoder_weights: expected imagenet, null or the path"):
        create_model("unet", 3, encoder="resnet18", encoder_weights=True)
    with pytest.raises(ConfigError, match="model.encoder_weights: encoder 'resnext101_32x4d' has no imagenet weights"):
        create_model("unet", 3, encoder="resnext101_32x4d", encoder_weights=IMAGENET)
