"""trainer.channels_last: NHWC student convolutions change speed only, never the numbers or the checkpoint."""

from __future__ import annotations

import copy

import torch

from ssondo_train.losses import build_loss
from ssondo_train.students import build_student_with_projector
from ssondo_train.students.frontend import StudentFrontEnd
from ssondo_train.training.module import DistillModule, OptimConfig, TargetNorm


def _module(student: torch.nn.Module, channels_last: bool) -> DistillModule:
    dim = student.classification_head.out_dim
    norm = TargetNorm("zscore", torch.zeros(dim), torch.ones(dim))
    return DistillModule(
        student, StudentFrontEnd(), build_loss("cosine"), norm, OptimConfig(), channels_last=channels_last
    )


def test_channels_last_student_gives_the_same_outputs_gradients_and_state_dict() -> None:
    torch.manual_seed(0)
    base = build_student_with_projector("mobilenetv3", teacher_dim=16, width_mult=0.4, hidden_dim=32)
    base.train()
    plain, nhwc = _module(copy.deepcopy(base), False), _module(copy.deepcopy(base), True)
    audio, target = 0.1 * torch.randn(3, 16000), torch.randn(3, 16)

    mel = nhwc.logmel(audio)
    assert mel.is_contiguous(memory_format=torch.channels_last) and not plain.logmel(audio).is_contiguous(
        memory_format=torch.channels_last
    )
    conv = next(m for m in nhwc.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mel, plain.logmel(audio))

    grads = []
    for m in (plain, nhwc):
        torch.manual_seed(1)  # same dropout mask
        proj, _ = m.student(m.logmel(audio))
        loss = 1 - torch.nn.functional.cosine_similarity(proj, target).mean()
        loss.backward()
        grads.append({k: p.grad for k, p in m.student.named_parameters()})
    # summation order differs: float32 rounding only (~2e-5 of the largest gradient entry)
    scale = max(float(g.abs().max()) for g in grads[0].values())
    for k, g in grads[0].items():
        torch.testing.assert_close(grads[1][k], g, rtol=1e-4, atol=1e-4 * scale, msg=k)
    a, b = plain.state_dict(), nhwc.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
