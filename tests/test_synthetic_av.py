"""The audio-visual fusion task (mtv.data.synthetic_av): labels need both streams, sounds are where they say."""

from __future__ import annotations

import numpy as np
import pytest

from mtv.data import synthetic, synthetic_av
from mtv.errors import DataError


def _band_energy(wave: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.shape[0], 1 / synthetic_av.SAMPLE_RATE)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].sum() / spectrum.sum())


def test_the_label_is_the_pair_of_motion_and_sound():
    assert len(synthetic_av.CLASSES) == len(synthetic_av.MOTIONS) * len(synthetic_av.SOUNDS)
    for label, name in enumerate(synthetic_av.CLASSES):
        motion, sound = synthetic_av.split_label(label)
        assert name == f"{synthetic_av.MOTIONS[motion]}+{synthetic_av.SOUNDS[sound]}"
        assert synthetic_av.MOTIONS[motion] in synthetic.CLASSES


@pytest.mark.parametrize("sound, band", [("low_tone", (200, 350)), ("high_beeps", (1700, 2700))])
def test_each_sound_adds_energy_in_its_own_band_and_none_adds_nothing(sound, band):
    rng = np.random.default_rng(0)
    bed = (0.1 * rng.normal(size=synthetic_av.SAMPLE_RATE)).astype(np.float32)  # white noise: flat spectrum
    base = _band_energy(bed, *band)
    np.testing.assert_array_equal(synthetic_av.mix_sound(bed, synthetic_av.SOUNDS.index("none"), rng), bed)
    mixed = synthetic_av.mix_sound(bed, synthetic_av.SOUNDS.index(sound), np.random.default_rng(1))
    other = (1700, 2700) if sound == "low_tone" else (200, 350)
    assert _band_energy(mixed, *band) > 1.5 * base
    assert _band_energy(mixed, *other) < _band_energy(bed, *other)  # the other band only gets diluted


def test_generated_examples_are_balanced_and_audio_outlasts_the_clip():
    sources = synthetic.texture_sources(2, size=(48, 64), seed=0)
    bed = np.random.default_rng(0).normal(size=4000).astype(np.float32)  # shorter than needed: tiled
    clips, audio, labels = synthetic_av.generate(18, sources=sources, beds=[bed], num_frames=8, size=16, fps=25.0,
                                                 seed=3)
    assert clips.shape == (18, 8, 16, 16, 3) and clips.dtype == np.uint8
    assert audio.shape == (18, int((8 / 25 + 0.5) * synthetic_av.SAMPLE_RATE))
    assert np.bincount(labels, minlength=9).tolist() == [2] * 9
    again = synthetic_av.generate(18, sources=sources, beds=[bed], num_frames=8, size=16, fps=25.0, seed=3)
    np.testing.assert_array_equal(again[1], audio)
    with pytest.raises(DataError, match="recording"):
        synthetic_av.generate(2, sources=sources, beds=[], num_frames=8, size=16, fps=25.0, seed=0)


def test_training_and_heldout_recordings_come_from_different_videos(videos_dir):
    train = synthetic_av.recordings(videos_dir, split="train")
    heldout = synthetic_av.recordings(videos_dir, split="heldout")
    assert len(train) >= 1 and len(heldout) == 1
    assert all(t.shape != heldout[0].shape or not np.allclose(t, heldout[0]) for t in train)
    with pytest.raises(DataError, match="split"):
        synthetic_av.recordings(videos_dir, split="test")
