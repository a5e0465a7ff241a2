"""Fast checks of the ViT teachers with a tiny geometry: strict keys, safe loading, chunking, registry."""

from __future__ import annotations

import math

import pytest
import torch

from ssondo_train.teachers import (
    TEACHERS,
    CheckpointFormatError,
    CheckpointKeyError,
    M2DTeacher,
    MATPACTeacher,
    Teacher,
    ViTConfig,
    build_teacher,
    load_m2d,
    load_matpac,
    slice_windows,
)
from ssondo_train.teachers.vit import AudioViTEncoder

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _m2d_state(teacher: M2DTeacher) -> dict[str, torch.Tensor]:
    return {**teacher.encoder.state_dict(), "norm_stats": torch.tensor([-7.1, 4.2])}


def _matpac_state(teacher: MATPACTeacher) -> dict[str, torch.Tensor]:
    return {
        ("student_encoder." + k if k.startswith(("blocks.", "norm.")) else k): v
        for k, v in teacher.encoder.state_dict().items()
    }


def test_vit_base_parameter_count():
    # 85.40 M including the (fixed) positional embedding, as measured upstream.
    with torch.device("meta"):
        encoder = AudioViTEncoder(ViTConfig())
    assert sum(p.numel() for p in encoder.parameters()) == 85_400_832
    assert len(encoder.state_dict()) == 150  # + norm_stats = M2D's 151 keys


def test_tiny_roundtrip_loads_exact_weights(tmp_path):
    src = M2DTeacher(TINY)
    state = _m2d_state(src)
    state["norm_stats"] = torch.tensor([-6.0, 3.0])
    torch.save(state, tmp_path / "m2d.pth")
    loaded = load_m2d(tmp_path / "m2d.pth", config=TINY)
    assert loaded.norm_stats == pytest.approx((-6.0, 3.0))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.inference_mode():
        lms_custom = loaded.log_mel(wav)
        lms_default = src.log_mel(wav)  # default (-7.1, 4.2)
    torch.testing.assert_close(lms_custom * 3.0 - 6.0, lms_default * 4.2 - 7.1, rtol=0, atol=2e-5)
    src.set_norm_stats(-6.0, 3.0)
    torch.testing.assert_close(loaded.embed(wav), src.embed(wav), rtol=0, atol=0)


@pytest.mark.parametrize("which", ["m2d", "matpac"])
def test_renamed_key_is_reported(tmp_path, which):
    teacher = M2DTeacher(TINY) if which == "m2d" else MATPACTeacher(TINY)
    state = _m2d_state(teacher) if which == "m2d" else _matpac_state(teacher)
    old = "blocks.1.attn.qkv.weight" if which == "m2d" else "student_encoder.blocks.1.attn.qkv.weight"
    state[old.replace("qkv", "qkv_renamed")] = state.pop(old)
    torch.save(state, tmp_path / "bad.pt")
    loader = load_m2d if which == "m2d" else load_matpac
    with pytest.raises(CheckpointKeyError) as info:
        loader(tmp_path / "bad.pt", config=TINY)
    assert info.value.missing == [old]
    assert info.value.unexpected == [old.replace("qkv", "qkv_renamed")]
    assert old in str(info.value) and "qkv_renamed" in str(info.value)


def test_missing_key_and_shape_mismatch_are_reported(tmp_path):
    state = _matpac_state(MATPACTeacher(TINY))
    del state["cls_token"]
    state["pos_embed"] = state["pos_embed"][:, :100]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointKeyError, match="cls_token") as info:
        load_matpac(tmp_path / "bad.pt", config=TINY)
    assert info.value.missing == ["cls_token"] and info.value.unexpected == []
    assert info.value.mismatched == {"pos_embed": ((1, 100, 32), (1, 191, 32))}


def test_extra_keys_need_explicit_permission(tmp_path):
    teacher = M2DTeacher(TINY)
    state = {**_m2d_state(teacher), "decoder_pred.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "full.pth")
    with pytest.raises(CheckpointKeyError, match="decoder_pred.weight"):
        load_m2d(tmp_path / "full.pth", config=TINY)
    loaded = load_m2d(tmp_path / "full.pth", config=TINY, allow_unexpected_keys=True)
    torch.testing.assert_close(loaded.encoder.pos_embed, teacher.encoder.pos_embed, rtol=0, atol=0)


_CALLS: list[str] = []


def _side_effect() -> dict:
    _CALLS.append("ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"cls_token": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(CheckpointFormatError, match="weights_only"):
        load_m2d(path, config=TINY)
    assert _CALLS == []  # the payload never executed


def test_garbage_file_is_a_format_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError):
        load_matpac(path, config=TINY)
    with pytest.raises(FileNotFoundError):
        load_matpac(tmp_path / "absent.pt", config=TINY)


def test_chunks_are_encoded_independently_with_cropped_positions():
    """1371 frames -> padded 1376 -> chunks 608 + 608 + 160 -> 38 + 38 + 10 = 86 steps."""
    torch.manual_seed(0)
    encoder = AudioViTEncoder(ViTConfig(**TINY)).eval()
    lms = torch.randn(2, 80, 1371)
    with torch.inference_mode():
        out = encoder(lms)
        assert out.shape == (2, 2, 86, 5 * 32)
        padded = torch.nn.functional.pad(lms, (0, 5))
        for start, steps in ((0, 38), (608, 38), (1216, 10)):
            alone = encoder(padded[..., start : start + 16 * steps])
            first = start // 16
            torch.testing.assert_close(out[:, :, first : first + steps], alone, rtol=0, atol=1e-5)
        # A 160-frame chunk uses columns 0..9 of every frequency row of the (5, 38) grid; changing columns
        # >= 10 must not matter (a flat crop of the first 50 tokens would pick up row 0's columns 10..37).
        grid = encoder.pos_embed.data[:, 1:].reshape(1, 5, 38, 32)
        grid[:, :, 10:] += 1.0
        changed = encoder(padded[..., 1216:])
        torch.testing.assert_close(changed, out[:, :, 76:], rtol=0, atol=1e-5)
        grid[:, :, 9] += 1.0
        assert not torch.allclose(encoder(padded[..., 1216:]), out[:, :, 76:], atol=1e-3)


def test_chunk_count_uses_unpadded_frames():
    encoder = AudioViTEncoder(ViTConfig(**TINY)).eval()
    for frames in (608, 609, 998, 1001, 1216, 1217):
        with torch.inference_mode():
            out = encoder(torch.zeros(1, 80, frames), all_layers=False)
        assert out.shape[2] == math.ceil(frames / 16), frames


def test_slice_windows_matches_ssondo():
    wav = torch.arange(219200, dtype=torch.float32).unsqueeze(0)
    windows = slice_windows(wav, 160000, 160000, add_last=True)
    assert windows.shape == (1, 2, 160000)
    assert windows[0, 1, 0] == 160000 and windows[0, 1, 59199] == 219199
    assert torch.count_nonzero(windows[0, 1, 59200:]) == 0
    assert slice_windows(wav[:, :160000], 160000, 160000).shape == (1, 1, 160000)
    assert slice_windows(wav, 160000, 160000, add_last=False).shape == (1, 1, 160000)


def test_registry_and_builders(tmp_path):
    assert set(TEACHERS) == {"matpac", "m2d", "whisper_tiny"}
    with pytest.raises(ValueError, match=r"\['m2d', 'matpac', 'whisper_tiny'\]"):
        build_teacher("beats")
    with pytest.raises(ValueError, match="checkpoint_path"):
        build_teacher("m2d")
    teacher = build_teacher("matpac", allow_random_init=True, config=TINY)
    assert isinstance(teacher, Teacher) and teacher.embed_dim == 160 and teacher.num_layers == 2
    wav = torch.randn(3, 16000) * 0.1
    emb = teacher.embed(wav)
    assert emb.shape == (3, 160) and teacher.embed_layers(wav).shape == (3, 2, 160)
    assert teacher.frames(wav).shape == (3, 7, 160)  # 1 s: 98 frames -> padded 112 -> 7 steps
    # Outputs are ordinary tensors: usable as targets in a graph with gradients.
    student = torch.zeros(3, 160, requires_grad=True)
    torch.nn.functional.cosine_similarity(student + 1.0, emb).sum().backward()
    assert student.grad is not None
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        teacher.embed(torch.zeros(16000))
    path = tmp_path / "m.pth"
    torch.save(_m2d_state(M2DTeacher(TINY)), path)
    assert build_teacher("m2d", checkpoint_path=str(path), config=TINY).metadata()["checkpoint_sha256"]
