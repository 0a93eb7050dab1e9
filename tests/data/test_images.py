"""Built-in raw images: DNG tags, varied camera traits, disjoint reproducible sets."""
import numpy as np
import tifffile

from utils.data.images import (
    CFA_PATTERNS,
    EVAL_SCENES,
    TRAIN_SCENES,
    Camera,
    build_split,
    mosaic,
    unprocess,
)


def test_mosaic_patterns():
    rgb = np.stack([np.full((2, 2), c, np.float32) for c in (10, 20, 30)], axis=-1)
    assert mosaic(rgb, "RGGB").tolist() == [[10, 20], [20, 30]]
    assert mosaic(rgb, "BGGR").tolist() == [[30, 20], [20, 10]]
    assert mosaic(rgb, "GRBG").tolist() == [[20, 10], [30, 20]]
    assert mosaic(rgb, "GBRG").tolist() == [[20, 30], [10, 20]]


def test_unprocess_respects_black_and_white_levels():
    cam = Camera("RGGB", 12, 256, 2.0, 1.5, 0.5, 0.8, 0.0)
    photo = np.linspace(0, 1, 4 * 6 * 3).reshape(4, 6, 3)
    counts = unprocess(photo, cam, np.random.default_rng(0))
    assert counts.dtype == np.uint16 and counts.shape == (4, 6)
    assert counts.min() >= 256 and counts.max() <= 4095


def test_sets_are_disjoint_and_cameras_vary():
    train = {s.source for s in TRAIN_SCENES}
    evaluation = {s.source for s in EVAL_SCENES}
    assert not train & evaluation
    cams = [s.camera for s in TRAIN_SCENES + EVAL_SCENES]
    assert {c.pattern for c in cams} == set(CFA_PATTERNS)
    assert {c.bits for c in cams} == {12, 14, 16}
    assert len({c.black for c in cams}) == len(cams)


def test_dng_tags_and_reproducibility(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = build_split("eval", tmp_path / "a", 64)
    second = build_split("eval", tmp_path / "b", 64)
    for p, q, scene in zip(first, second, EVAL_SCENES):
        assert p.read_bytes() == q.read_bytes()
        with tifffile.TiffFile(p) as tif:
            tags = tif.pages[0].tags
            assert tags["PhotometricInterpretation"].value == 32803
            assert tuple(tags["CFAPattern"].value) == CFA_PATTERNS[scene.camera.pattern]
            assert tags["BlackLevel"].value == scene.camera.black
            assert tags["WhiteLevel"].value == 2 ** scene.camera.bits - 1
            assert max(tif.pages[0].shape) == 64 and tif.pages[0].shape[0] % 2 == 0
