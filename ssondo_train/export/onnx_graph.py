"""ONNX export of a student, waveform in, embeddings out.

Graph (``input="waveform"``, the default)::

    waveform (B, n) float32 mono at preprocess.sample_rate (32 kHz)
      -> zero-pad to a whole number of 10-s windows (tail="pad"; tail="drop" cuts the remainder instead)
      -> (B*S, 320000) -> log-mel (STFT as a strided Conv1d over a Hann-windowed DFT basis, power,
         Slaney mel matrix, log(x + 1e-3)) -> (B, S, 128, 624) -> backbone -> projector
    outputs: embedding (B, E)            backbone embedding, mean over segments (= SsondoModel.get_embeddings)
             projection (B, Dt)          projector output, mean over segments (= SsondoModel.project)
             segment_embeddings (B, S, E) per-segment backbone embeddings (= SsondoModel(audio) without head)

Batch and length are dynamic. The STFT is a convolution because ``torch.stft``'s complex output is not
exportable by the TorchScript-based exporter and the conv form runs on every ONNX runtime; it matches
``StudentFrontEnd`` (torch.stft) to ~1e-5 on the log-mel. Only non-overlapping windows (hop == window,
S-SONDO's setting) are supported in the graph. MobileNetV3 and ERes2Net export; DyMN does not (its
dynamic convolutions have input-dependent kernels, see :func:`onnx_supported`). ``input="logmel"``
exports backbone + projector only: input ``logmel`` (B, S, 128, T), same outputs.

The exporter used is torch's TorchScript-based one (``dynamo=False``): it needs no extra package
(the dynamo exporter needs ``onnxscript``) and handles the shape arithmetic of the padding.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ssondo_train.export.formats import FORMAT_NAME, PreprocessSpec
from ssondo_train.students import StudentFrontEnd, StudentWithProjector
from ssondo_train.utils.io import atomic_path
from ssondo_train.version import __version__

OUTPUT_NAMES = ("embedding", "projection", "segment_embeddings")


class DftLogMel(nn.Module):
    """The student log-mel with the STFT as a Conv1d; (N, n) -> (N, n_mels, 1 + (n - n_fft) // hop)."""

    def __init__(self, spec: PreprocessSpec) -> None:
        super().__init__()
        n_fft, n_freq = spec.n_fft, spec.n_fft // 2 + 1
        t = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(n_freq, dtype=torch.float64)[:, None]
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        angle = 2.0 * math.pi * k * t / n_fft
        # Built in float64 so the basis itself adds no error beyond float32 rounding.
        basis = torch.cat([window * torch.cos(angle), -window * torch.sin(angle)], dim=0)
        self.register_buffer("basis", basis.to(torch.float32).unsqueeze(1), persistent=False)
        self.register_buffer(
            "fbank", StudentFrontEnd(**spec.frontend_kwargs()).fbank.clone(), persistent=False
        )
        self.n_freq = n_freq
        self.hop_length = spec.hop_length
        self.log_offset = spec.log_offset

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(wav.unsqueeze(1), self.basis, stride=self.hop_length)  # (N, 2 * n_freq, T)
        real, imag = spec[:, : self.n_freq], spec[:, self.n_freq :]
        power = real * real + imag * imag
        mel = torch.matmul(power.transpose(1, 2), self.fbank).transpose(1, 2)
        return torch.log(mel + self.log_offset)


class WaveformEmbedder(nn.Module):
    """Exportable waveform -> (embedding, projection, segment_embeddings); see the module docstring."""

    def __init__(
        self, student: StudentWithProjector, spec: PreprocessSpec, tail: Literal["pad", "drop"] = "pad"
    ):
        super().__init__()
        if spec.window_samples != spec.hop_samples:
            raise ValueError("the ONNX graph supports non-overlapping windows only (hop_s == window_s)")
        if tail not in ("pad", "drop"):
            raise ValueError(f"tail must be 'pad' or 'drop', got {tail!r}")
        self.student = student
        self.logmel = DftLogMel(spec)
        self.window = spec.window_samples
        self.n_mels = spec.n_mels
        self.n_frames = 1 + (spec.window_samples - spec.n_fft) // spec.hop_length
        self.norm = (spec.norm_mean, spec.norm_std) if spec.normalizes else None
        self.tail = tail

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n = waveform.shape[0], waveform.shape[1]
        if self.tail == "pad":
            x = F.pad(waveform, (0, (self.window - n % self.window) % self.window))
        else:
            x = waveform[:, : (n // self.window) * self.window]
        logmel = self.logmel(x.reshape(-1, self.window))
        if self.norm is not None:
            logmel = (logmel - self.norm[0]) / self.norm[1]
        emb = self.student.model(logmel.reshape(b, -1, self.n_mels, self.n_frames))
        return emb.mean(dim=1), self.student.classification_head(emb), emb


class LogMelEmbedder(nn.Module):
    """Exportable log-mel (B, S, F, T) -> (embedding, projection, segment_embeddings)."""

    def __init__(self, student: StudentWithProjector) -> None:
        super().__init__()
        self.student = student

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.student.model(logmel)
        return emb.mean(dim=1), self.student.classification_head(emb), emb


def onnx_supported(student: StudentWithProjector) -> bool:
    """False for backbones the exporter cannot handle (DyMN's input-dependent convolution kernels)."""
    from ssondo_train.students import DyMN

    return not isinstance(student.model, DyMN)


def export_onnx(
    path: str | Path,
    student: StudentWithProjector,
    input: Literal["waveform", "logmel"] = "waveform",
    preprocess: PreprocessSpec | None = None,
    tail: Literal["pad", "drop"] = "pad",
    opset: int = 17,
) -> Path:
    """Export ``student`` to ONNX (atomically); outputs ``embedding``, ``projection``, ``segment_embeddings``.

    Args:
        path: output ``.onnx`` file.
        student: backbone + projector (exported in eval mode; the caller's mode is restored).
        input: ``"waveform"`` (B, n) at ``preprocess.sample_rate`` or ``"logmel"`` (B, S, n_mels, T).
        preprocess: front-end spec (S-SONDO's when None).
        tail: how the waveform graph treats the remainder after the last full window.
        opset: ONNX opset.

    Returns:
        ``path``. The model's ``metadata_props`` hold the format name, package version, input kind,
        output names, embedding/projection sizes and the preprocess spec (JSON).
    """
    import onnx

    if not onnx_supported(student):
        raise NotImplementedError(
            f"{type(student.model).__name__}: its dynamic convolutions build kernels per input, which the "
            "TorchScript ONNX exporter cannot express (Conv needs a static kernel shape); use the "
            "safetensors "
            "or S-SONDO checkpoint export for this student"
        )
    spec = preprocess or PreprocessSpec()
    if input == "waveform":
        module: nn.Module = WaveformEmbedder(student, spec, tail)
        n = spec.window_samples + spec.window_samples // 2
        example = torch.zeros(2, n).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(0))
        dynamic = {"waveform": {0: "batch", 1: "samples"}}
    elif input == "logmel":
        module = LogMelEmbedder(student)
        frames = 1 + (spec.window_samples - spec.n_fft) // spec.hop_length
        example = torch.randn(2, 2, spec.n_mels, frames, generator=torch.Generator().manual_seed(0))
        dynamic = {"logmel": {0: "batch", 1: "segments"}}
    else:
        raise ValueError(f"input must be 'waveform' or 'logmel', got {input!r}")
    dynamic.update(
        {
            "embedding": {0: "batch"},
            "projection": {0: "batch"},
            "segment_embeddings": {0: "batch", 1: "segments"},
        }
    )
    was_training = student.training
    student.eval()
    path = Path(path)
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated upstream but is the one that needs no extra package
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[input],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
            )
            model = onnx.load(str(tmp))
            meta = {
                "format": f"{FORMAT_NAME}-onnx",
                "format_version": "1",
                "ssondo_train_version": __version__,
                "input": input,
                "tail": tail,
                "outputs": ",".join(OUTPUT_NAMES),
                "embedding_dim": str(student.emb_size),
                "projection_dim": str(student.out_dim),
                "preprocess": json.dumps(spec.to_dict()),
            }
            for key, value in meta.items():
                entry = model.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(model)
            onnx.save(model, str(tmp))
    finally:
        student.train(was_training)
    return path
