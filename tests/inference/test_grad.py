"""SsondoModel records no autograd graph in eval mode (results go to numpy); gradients on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_train.export import backbone_spec_from_ssondo_config, save_safetensors
from ssondo_train.inference import SsondoModel, get_ssondo
from tests.golden import training_config
from tests.inference.helpers import SHORT, audio, golden_student


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SsondoModel:
    root = tmp_path_factory.mktemp("export")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    save_safetensors(
        root, golden_student("mn10"), {"backbone": {"name": name, "kwargs": kwargs}, "preprocess": SHORT}
    )
    return get_ssondo(root, head="linear", n_classes=3)


CALLS = ("preprocess", "segment_embeddings", "get_embeddings", "project", "__call__")


@pytest.mark.parametrize("call", CALLS)
def test_eval_mode_results_go_straight_to_numpy(model: SsondoModel, call: str) -> None:
    assert not model.training
    out = getattr(model, call)(audio(2, 1.0))
    assert not out.requires_grad and out.grad_fn is None
    assert isinstance(out.numpy(), np.ndarray)
    # plain tensors, not inference tensors: they feed a head that is being trained
    head = torch.nn.Linear(out.shape[-1], 2)
    head(out).sum().backward()
    assert head.weight.grad is not None


@pytest.mark.parametrize("call", CALLS[1:])
def test_grad_true_gives_gradients_in_eval_mode(model: SsondoModel, call: str) -> None:
    x = audio(1, 1.0).requires_grad_(True)
    with torch.no_grad():  # an explicit request wins over the caller's mode
        out = getattr(model, call)(x, grad=True)
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert getattr(model, call)(x, grad=False).grad_fn is None


def test_train_mode_keeps_gradients_for_fine_tuning(model: SsondoModel) -> None:
    model.train()
    try:
        loss = model(audio(2, 1.0)).square().mean()
        assert loss.requires_grad
        loss.backward()
        assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
        with torch.no_grad():  # the caller's no_grad (a validation loop) is respected
            assert not model.get_embeddings(audio(2, 1.0)).requires_grad
        assert not model.get_embeddings(audio(2, 1.0), grad=False).requires_grad
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)


def test_no_graph_gives_the_same_numbers(model: SsondoModel) -> None:
    x = audio(2, 1.5)
    torch.testing.assert_close(model.project(x), model.project(x, grad=True).detach(), rtol=0, atol=0)
    torch.testing.assert_close(model(x), model.head(model.get_embeddings(x)), rtol=0, atol=0)
