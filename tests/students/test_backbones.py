"""Backbones and projector: parameter counts, exact key layout, shapes, BN settings, DyMN specifics."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from ssondo_train.students import (
    STUDENTS,
    DyMN,
    ERes2Net,
    MobileNetV3,
    Projector,
    StudentWithProjector,
    build_student,
    build_student_with_projector,
    dymn_temperature,
)
from tests.golden import expected, golden_state_dict, key_shapes

GOLDEN_NAMES = {"mobilenetv3": "mn10", "dymn": "dymn10", "eres2net": "eres2net"}
EXPECTED = {  # name: (backbone params, emb_size, total params with the 3840-d projector)
    "mobilenetv3": (2_971_664, 960, 9_120_784),
    "dymn": (8_643_312, 960, 14_792_432),
    "eres2net": (1_368_068, 1024, 7_599_108),
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def golden_backbone(name: str, **kwargs) -> nn.Module:
    """Backbone with the golden synthetic weights: random-init CNNs in eval mode give near-constant outputs
    (their BN running stats do not normalise), which would make equality checks vacuous."""
    model = build_student(name, **kwargs)
    model.load_state_dict(_golden_backbone_state(name), strict=True)
    return model.eval()


@functools.cache
def _golden_backbone_state(name: str) -> dict[str, torch.Tensor]:
    prefix = "student_model.model."
    golden = golden_state_dict(GOLDEN_NAMES[name])
    return {k.removeprefix(prefix): v for k, v in golden.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def short_logmel() -> torch.Tensor:
    """The two golden log-mel windows cut to 64 frames: (1, 2, 128, 64)."""
    return torch.from_numpy(expected("student")["logmel"][..., :64]).contiguous()


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_parameter_counts_and_keys(name: str) -> None:
    model = build_student_with_projector(name, teacher_dim=3840)
    backbone_params, emb, total = EXPECTED[name]
    assert n_params(model.model) == backbone_params
    assert model.emb_size == emb
    assert n_params(model) == total
    golden = [(k.removeprefix("student_model."), s) for k, s in key_shapes(GOLDEN_NAMES[name])]
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == golden  # names, shapes and order of the S-SONDO checkpoint


def test_last_channel() -> None:
    assert MobileNetV3().last_channel == 1280
    assert DyMN().last_channel == 1280
    assert not hasattr(ERes2Net(), "last_channel")
    assert build_student_with_projector("eres2net").classification_head.mlp[0].out_features == 1280


def test_build_student_unknown_name() -> None:
    with pytest.raises(ValueError, match="dymn, eres2net, mobilenetv3"):
        build_student("resnet50")


def test_batchnorm_settings() -> None:
    for model, eps, momentum in (
        (MobileNetV3(), 1e-3, 0.01),
        (DyMN(), 1e-3, 0.01),
        (ERes2Net(), 1e-5, 0.1),
        (MobileNetV3(bn_momentum=0.1), 1e-3, 0.1),
        (DyMN(bn_momentum=0.05), 1e-3, 0.05),
    ):
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        assert bns and all(b.eps == eps and b.momentum == momentum for b in bns), type(model).__name__


def test_efficientat_init() -> None:
    torch.manual_seed(0)
    model = MobileNetV3()
    fc = model.features[14].block[2].conc_se_layers[0].fc1
    assert abs(fc.weight.std().item() - 0.01) < 0.001 and torch.count_nonzero(fc.bias) == 0
    conv = model.features[16][0]  # (960, 160, 1, 1): kaiming fan_out std = sqrt(2 / 960)
    assert abs(conv.weight.std().item() / (2 / 960) ** 0.5 - 1) < 0.05


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_forward_shapes_and_3d_input(name: str, short_logmel: torch.Tensor) -> None:
    model = golden_backbone(name)
    x = torch.cat([short_logmel, short_logmel.flip(-1)], dim=0)  # (2, 2, 128, 64), four different segments
    with torch.no_grad():
        out = model(x)
        single = model(x[:, 0])  # (B, F, T) is one segment per item
    assert out.shape == (2, 2, model.emb_size)
    assert single.shape == (2, 1, model.emb_size)
    scale = out.abs().max().item()
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3 * scale  # segments are not collapsed
    assert (out[0] - out[1]).abs().max() > 1e-3 * scale
    torch.testing.assert_close(single[:, 0], out[:, 0], atol=5e-5 * scale, rtol=0)


@pytest.mark.slow
def test_dymn_multi_segment_equals_segments_alone(short_logmel: torch.Tensor) -> None:
    # float64 so that the comparison is exact up to rounding; in float32 the batch size changes the
    # kernels' summation order and the differences reach ~1e-5 relative. 32 frames keep it fast.
    model = golden_backbone("dymn").double()
    x = short_logmel[..., :32].double()
    with torch.no_grad():
        both = model(x)
        alone = torch.cat([model(x[:, s : s + 1]) for s in range(2)], dim=1)
    assert both.shape == (1, 2, 960)
    # Each segment gets its own dynamic kernels (upstream DyMN could not take S = 2 at all).
    assert (both[:, 0] - both[:, 1]).abs().max() > 0.05
    torch.testing.assert_close(both, alone, atol=1e-9, rtol=0)


def test_dymn_temperature_schedule_and_setters() -> None:
    assert dymn_temperature(0) == 30.0
    assert dymn_temperature(10) == 20.0
    assert dymn_temperature(100) == 1.0
    assert dymn_temperature(28) == pytest.approx(2.0)
    assert dymn_temperature(100, t_min=5.0) == 5.0
    # The line 1 + t1 * (t_max - 1) / t0 - t1 * epoch wins when steeper: max(30 - 28, 1 + 29 * 2 - 56).
    assert dymn_temperature(28, t1_slope=2.0) == pytest.approx(3.0)
    model = DyMN(temperature=12.0)
    assert model.temperature == 12.0
    assert model.anneal(5) == 7.0 and model.temperature == 7.0
    model.set_temperature(30.0)
    temps = {m.temperature for m in model.modules() if hasattr(m, "temperature") and m is not model}
    assert temps == {30.0}
    with pytest.raises(ValueError):
        model.set_temperature(0.0)


def test_dymn_temperature_changes_output(short_logmel: torch.Tensor) -> None:
    model = golden_backbone("dymn")
    x = short_logmel[:, :1]
    with torch.no_grad():
        hot = model(x)
        model.set_temperature(1.0)
        cold = model(x)
        model.set_temperature(30.0)
        again = model(x)
    assert (hot - cold).abs().max() > 1.0  # the temperature is not in the weights but matters a lot
    torch.testing.assert_close(again, hot, atol=0, rtol=0)


def test_projector_means_over_segments() -> None:
    torch.manual_seed(0)
    head = Projector(8, out_dim=5, hidden_dim=16).eval()
    assert list(head.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.3.weight", "mlp.3.bias"]
    emb = torch.randn(3, 4, 8)
    out = head(emb)
    assert out.shape == (3, 5)
    per_segment = torch.stack([head(emb[:, s]) for s in range(4)], dim=1)
    torch.testing.assert_close(out, per_segment.mean(1))
    head.train()
    assert not torch.equal(head(emb), head(emb))  # dropout active in training


def test_student_with_projector_outputs() -> None:
    torch.manual_seed(0)
    model = StudentWithProjector(MobileNetV3(), Projector(960, 12)).eval()
    with torch.no_grad():
        proj, emb = model(torch.randn(2, 2, 128, 64))
    assert proj.shape == (2, 12) and emb.shape == (2, 2, 960)
    assert model.out_dim == 12


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_training_step_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_student_with_projector(name, teacher_dim=16).train()
    proj, emb = model(torch.randn(2, 1, 128, 32))  # 32 frames: ERes2Net keeps 2 for its time std
    (proj.square().mean() + emb.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    grad_norms = [p.grad.abs().sum().item() for p in model.model.parameters()]
    assert sum(g > 0 for g in grad_norms) > 0.9 * len(grad_norms)  # gradients really flow into the backbone
