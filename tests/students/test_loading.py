"""ImageNet init loading (strict, weights_only) and building students from S-SONDO training configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ssondo_train.students import (
    DyMN,
    ERes2Net,
    MobileNetV3,
    build_student_with_projector,
    load_imagenet_init,
    student_from_ssondo_config,
)
from tests.golden import training_config


def write_efficientat_file(backbone: torch.nn.Module, path: Path, emb: int) -> dict[str, torch.Tensor]:
    """An ``mn10_im.pt``-style file: the backbone state dict plus EfficientAT's ImageNet classifier."""
    state = dict(backbone.state_dict())
    state["classifier.0.weight"] = torch.randn(1280, emb)
    state["classifier.0.bias"] = torch.randn(1280)
    state["classifier.3.weight"] = torch.randn(1000, 1280)
    state["classifier.3.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("cls", [MobileNetV3, DyMN])
def test_imagenet_init_strict_load(cls: type[torch.nn.Module], tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = cls()
    with torch.no_grad():  # make the BN statistics non-default so the check is meaningful
        for name, buf in source.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    path = tmp_path / "im.pt"
    write_efficientat_file(source, path, 960)
    torch.manual_seed(1)
    target = build_student_with_projector("mobilenetv3" if cls is MobileNetV3 else "dymn")
    head_before = {k: v.clone() for k, v in target.classification_head.state_dict().items()}
    load_imagenet_init(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.model.state_dict()[key], value), key
    for key, value in target.classification_head.state_dict().items():
        assert torch.equal(value, head_before[key])  # the projector is not touched


def test_imagenet_init_reports_mismatches(tmp_path: Path) -> None:
    source = MobileNetV3()
    state = write_efficientat_file(source, tmp_path / "ok.pt", 960)
    del state["features.3.block.0.0.weight"]
    state["features.99.weight"] = torch.zeros(1)
    state["features.16.1.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as err:
        load_imagenet_init(MobileNetV3(), tmp_path / "bad.pt")
    message = str(err.value)
    assert "missing (1): features.3.block.0.0.weight" in message
    assert "unexpected (1): features.99.weight" in message
    assert "features.16.1.bias: file (7,) vs model (960,)" in message
    # A DyMN file does not fit a MobileNetV3.
    torch.save(DyMN().state_dict(), tmp_path / "dymn.pt")
    with pytest.raises(ValueError, match="missing"):
        load_imagenet_init(MobileNetV3(), tmp_path / "dymn.pt")


class _NotATensor:
    pass


def test_imagenet_init_refuses_pickled_objects(tmp_path: Path) -> None:
    torch.save({"features.0.0.weight": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_imagenet_init(MobileNetV3(), tmp_path / "evil.pt")


@pytest.mark.parametrize(
    ("name", "cls", "hidden"),
    [("mn10", MobileNetV3, 1280), ("dymn10", DyMN, 1280), ("eres2net", ERes2Net, 1280)],
)
def test_student_from_ssondo_config(name: str, cls: type, hidden: int) -> None:
    model = student_from_ssondo_config(training_config(name))
    assert type(model.model) is cls
    assert model.classification_head.mlp[0].out_features == hidden
    assert model.out_dim == 3840


def test_student_from_ssondo_config_dymn_temperature() -> None:
    cfg = training_config("dymn10")
    cfg["student_model"]["pretrain_final_temp"] = 12.5
    assert student_from_ssondo_config(cfg).model.temperature == 12.5
    del cfg["student_model"]["pretrain_final_temp"]
    assert student_from_ssondo_config(cfg).model.temperature == 30.0


def test_student_from_ssondo_config_passes_architecture_keys() -> None:
    cfg = training_config("eres2net")
    cfg["student_model"]["add_layer"] = False
    cfg["student_model"]["num_blocks"] = [1, 1, 1, 1]
    cfg["classification_head"]["n_classes"] = 768
    model = student_from_ssondo_config(cfg)
    # Without layer5 the pooled map is (16 * 8 * 2 channels) x (128 / 8 bands), mean + std: 4096 * 2.
    assert model.emb_size == 8192
    assert model.out_dim == 768
