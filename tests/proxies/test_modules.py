"""Every registered proxy type against the real darktable-cli (marked ``darktable``).

For each type: darktable accepts our params struct for its module version (nothing dropped),
moving each slider away from its default changes the tapped output, and one tiny sample of
data generates. Sliders are checked at a generic setting of the others (each moved off its
default), as training samples them: some act only together (colorbalancergb's grey fulcrum
needs a contrast, colorize's lightness mix a saturation). All renders run in one darktable process (``Darktable.render_batch``).
"""
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from utils.darktable.params import Struct, fields
from utils.darktable.runner import Job
from utils.data.generate import generate
from utils.data.manifest import read_manifest
from utils.errors import DarktableError, UserError
from utils.proxies.registry import PROXIES

pytestmark = pytest.mark.darktable

SIZE = 128   # pixels: long side of the renders (the size of the measured trainings)


def moved(slider) -> float:
    """A value well away from the slider's default, inside its range."""
    return slider.from_unit(0.25 if slider.to_unit(slider.default) >= 0.5 else 0.75)


@pytest.fixture(scope="module")
def renders(dt, raw_image):
    """(type, case) -> the module's output tap-out or DarktableError. Cases: "moved" (every
    slider moved), "default" (every slider at its default), <slider> (all moved but that one).

    Each type renders "moved" twice (first and last of its jobs): their difference is the
    batch's noise floor (a later image of one process can differ slightly, e.g. where
    highlight reconstruction acts).
    """
    keys, jobs = [], []
    for proxy in PROXIES.values():
        generic = {s.name: moved(s) for s in proxy.sliders}
        cases = ([("moved", generic), ("default", {})]
                 + [(s.name, {**generic, s.name: s.default}) for s in proxy.sliders] + [("again", generic)])
        for case, values in cases:
            keys.append((proxy.name, case))
            jobs.append(Job(raw_image, (proxy.history_item(dt, values),), dump=(proxy.operation,)))
    results = dt.render_batch(jobs, size=SIZE, hq=False)
    return {key: r if isinstance(r, DarktableError) else r.io(PROXIES[key[0]].operation)[1]
            for key, r in zip(keys, results)}


def output(renders, name, case):
    result = renders[(name, case)]
    if isinstance(result, DarktableError):
        pytest.fail(f"{name} ({case}): {result}")
    return result.astype(np.float64)


@pytest.mark.parametrize("name", PROXIES)
def test_darktable_takes_our_params(dt, renders, name):
    proxy = PROXIES[name]
    assert proxy.module_version(dt) in {s.version for s in proxy.structs}
    # render_batch checked darktable's -d params report: version and size ok for every job
    for case in ["moved", "default", *(s.name for s in proxy.sliders)]:
        assert np.isfinite(output(renders, name, case)).all()


@pytest.mark.parametrize("name, slider", [(p.name, s.name) for p in PROXIES.values() for s in p.sliders])
def test_every_slider_changes_the_output(renders, name, slider):
    base = output(renders, name, "moved")
    noise = np.abs(output(renders, name, "again") - base).mean()
    change = np.abs(output(renders, name, slider) - base).mean()
    assert change > max(10 * noise, 1e-3 * np.abs(base).mean()), (
        f"{name}.{slider} from {PROXIES[name].slider(slider).default:g} to "
        f"{moved(PROXIES[name].slider(slider)):g}: mean change {change:.3g}, "
        f"noise {noise:.3g}, mean output {np.abs(base).mean():.3g}")


@pytest.fixture(scope="module")
def tiny_datasets(dt, raw_image, tmp_path_factory):
    """type -> (folder, generation report) of a one-sample dataset (32 px), made 4 at a time."""
    root = tmp_path_factory.mktemp("modules")

    def one(proxy):
        folder = root / proxy.name
        return folder, generate(dt, proxy, proxy.sliders, [raw_image], folder, per_image=1, seed=0,
                                stage=1, size=32, workers=1)

    with ThreadPoolExecutor(4) as pool:
        return dict(zip(PROXIES, pool.map(one, PROXIES.values())))


@pytest.mark.parametrize("name", PROXIES)
def test_one_tiny_sample_generates(tiny_datasets, name):
    folder, report = tiny_datasets[name]
    assert report.generated == 1 and not report.failed, report.failed
    row = read_manifest(folder)[0]
    assert {s.name for s in PROXIES[name].sliders} <= set(row)


def test_unknown_module_version_is_refused(dt):
    future = dataclasses.replace(PROXIES["sharpen"], structs=(Struct(99, fields("radius:f=2")),))
    with pytest.raises(UserError) as refused:
        future.module_version(dt)       # even where sharpen v1 is cached
    message = str(refused.value)
    assert "\n" not in message and f"darktable {dt.install.version_string}" in message
    assert "sharpen" in message and "(99)" in message
