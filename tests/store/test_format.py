from __future__ import annotations

import numpy as np
import pytest

from ssondo_train.store import (
    decode_audio,
    encode_audio,
    escape_clip_id,
    parse_sample_key,
    plan_shards,
    sample_key,
    unescape_clip_id,
)


@pytest.mark.parametrize("clip", ["abc_30.000_40.000", "-x_y.1", "a/b\\c d%e", "é€😀", "a__w00003"])
def test_escape_round_trip_and_key_charset(clip: str) -> None:
    esc = escape_clip_id(clip)
    assert set(esc) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%")
    assert "." not in esc and "/" not in esc
    assert unescape_clip_id(esc) == clip
    key = sample_key(clip, 7)
    assert key.endswith("__w00007")
    assert parse_sample_key(key) == (clip, 7)


def test_escape_examples_and_injective() -> None:
    assert escape_clip_id("abc_30.000_40.000") == "abc_30%2E000_40%2E000"
    assert escape_clip_id("a.b") != escape_clip_id("a%2Eb")
    assert sample_key("x", 123456) == "x__w123456"
    with pytest.raises(ValueError):
        parse_sample_key("nokey")


def test_audio_codecs_are_lossless_on_their_quantisation() -> None:
    rng = np.random.default_rng(0)
    wave = rng.uniform(-1.0, 1.0, 32000).astype(np.float32)
    wave[:3] = [1.0, -1.0, 0.0]
    pcm = np.clip(np.rint(wave.astype(np.float64) * 32768), -32768, 32767) / 32768
    for codec in ("flac", "pcm16"):
        back = decode_audio(encode_audio(wave, codec), codec)
        assert back.dtype == np.float32 and back.shape == wave.shape
        np.testing.assert_array_equal(back, pcm.astype(np.float32))
        assert np.abs(back - wave).max() <= 1 / 32768 + 1e-9
    back = decode_audio(encode_audio(wave, "float32"), "float32")
    np.testing.assert_array_equal(back, wave)
    tone = (0.3 * np.sin(np.arange(32000) * 0.05)).astype(np.float32)
    assert len(encode_audio(tone, "flac")) < 0.6 * len(encode_audio(tone, "pcm16"))
    with pytest.raises(ValueError):
        encode_audio(np.zeros((2, 10), np.float32), "flac")


def test_plan_is_deterministic_disjoint_and_covering() -> None:
    clips = [f"c{i}" for i in range(23)]
    single = plan_shards(clips, 5)
    assert [p.shard for p in single] == [0, 1, 2, 3, 4]
    assert single[-1].clip_ids == tuple(clips[20:])
    r0, r1, r2 = (plan_shards(clips, 5, r, 3) for r in range(3))
    assert (
        [p.shard for p in r0] == [0, 3] and [p.shard for p in r1] == [1, 4] and [p.shard for p in r2] == [2]
    )
    assert sorted((p for p in r0 + r1 + r2), key=lambda p: p.shard) == single
    assert len({p.plan_id for p in single}) == 1
    assert plan_shards(clips, 6)[0].plan_id != single[0].plan_id
    assert plan_shards(list(reversed(clips)), 5)[0].plan_id != single[0].plan_id
    with pytest.raises(ValueError, match="unique"):
        plan_shards(["a", "b", "a"], 2)
