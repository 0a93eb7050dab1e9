"""Levenberg-Marquardt on rendered images (utils/pipeline/polish.py), on a smooth stand-in
for a renderer: an exposure-like gain and a saturation-like mix, clipped like an export."""
import numpy as np

from utils.pipeline.polish import polish

BASE = np.random.default_rng(0).uniform(0.0, 0.6, (8, 8, 3))


def look(u):
    gain = 2.0 ** (4 * u[0] - 2)
    grey = BASE.mean(axis=2, keepdims=True)
    return np.clip(gain * (grey + (2 * u[1]) * (BASE - grey)), 0.0, 1.0)


def counted():
    calls = []

    def render(points):
        calls.append(len(points))
        return [look(p) for p in points]
    return render, calls


def test_polish_recovers_the_sliders_from_a_nearby_start():
    truth = np.array([0.7, 0.35])
    render, calls = counted()
    result = polish(render, np.array([0.62, 0.45]), look(truth), steps=6)
    assert np.abs(result.u - truth).max() < 1e-4
    assert result.psnr[-1] > 80 and result.psnr == sorted(result.psnr)
    # each step: the S moved points (and, first, the start), then the three dampings
    assert calls[:2] == [3, 3] and result.renders == sum(calls)


def test_polish_never_returns_worse_than_its_start():
    truth = np.array([0.7, 0.35])
    render, _ = counted()
    result = polish(render, truth, look(truth), steps=3)    # already exact: nothing improves on it
    np.testing.assert_array_equal(result.u, truth)
    assert result.psnr == [200.0]
    # out of range starts are projected into it, steps too
    result = polish(render, np.array([1.3, -0.2]), look(np.array([1.0, 0.0])), steps=4)
    assert ((result.u >= 0) & (result.u <= 1)).all() and result.psnr[-1] >= result.psnr[0]
    assert polish(render, truth, look(truth), steps=0).psnr == []
