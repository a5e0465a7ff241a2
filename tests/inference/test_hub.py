"""Registry names resolved through a local Hugging Face cache (HF_HUB_OFFLINE=1), and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssondo_train.export import export_student, ssondo_training_config
from ssondo_train.export.formats import backbone_spec_from_ssondo_config
from ssondo_train.inference import HubDownloadError, get_ssondo
from tests.golden import training_config
from tests.inference.helpers import SHORT, audio, golden_student, make_hf_cache, use_hf_cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Linear]:
    root = tmp_path_factory.mktemp("exp")
    torch.manual_seed(0)
    head = nn.Linear(960, 50)
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    export_student(
        root,
        golden_student("mn10"),
        ssondo_training_config(name, kwargs, preprocess=SHORT),
        {"name": "matpac"},
        heads={"esc50": (head, {"classes": [f"c{i}" for i in range(50)]})},
        onnx=False,
    )
    return root, head


def test_registry_name_resolves_from_offline_cache(exported, tmp_path: Path, monkeypatch) -> None:
    root, head = exported
    hub = use_hf_cache(monkeypatch, tmp_path / "hf")
    make_hf_cache(
        hub,
        {
            "matpac_mobilenetv3.ckpt": root / "ssondo.ckpt",
            "heads/esc50.pth": root / "heads/esc50.pth",
            "heads/esc50.json": root / "heads/esc50.json",
        },
    )
    model = get_ssondo("matpac-mobilenetv3", head="esc50")
    assert model.meta["registry_name"] == "matpac-mobilenetv3"
    assert model.meta["head"]["name"] == "esc50" and model.meta["head"]["classes"][:2] == ["c0", "c1"]
    local = get_ssondo(root)
    x = audio(2, 1.5)
    with torch.no_grad():
        logits = model(x)
        expected = head(local.get_embeddings(x))
    assert logits.shape == (2, 50)
    assert (logits - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_missing_file_offline_names_hf_hub_offline(tmp_path: Path, monkeypatch) -> None:
    use_hf_cache(monkeypatch, tmp_path / "hf")
    with pytest.raises(
        HubDownloadError, match=r"HF_HUB_OFFLINE=1 is set.*m2d_dymn\.ckpt|m2d_dymn\.ckpt.*HF_HUB_OFFLINE=1"
    ):
        get_ssondo("m2d-dymn")


def test_network_failure_names_the_network(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    use_hf_cache(monkeypatch, tmp_path / "hf", offline=False)
    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(HubDownloadError, match="network connection.*HF_HUB_OFFLINE=1"):
        get_ssondo("matpac-eres2net")
    assert calls[0]["repo_id"] == "mohammedali2501/ssondo" and calls[0]["filename"] == "matpac_eres2net.ckpt"
    assert calls[0]["local_files_only"] is False
