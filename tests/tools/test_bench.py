"""``python -m tools.bench`` end to end with tiny settings (figures are not checked: no timed tests)."""
import json

import pytest

from models.networks import EXACT_FAMILY, FAMILIES
from tools.bench import main, table
from utils.proxies.registry import PROXIES

TINY = ["--model-size", "tiny", "--image", "32", "--repeats", "1", "--train-steps", "1",
        "--regression-iterations", "2", "--full-frame-iterations", "1", "--regression-size", "24", "32",
        "--variants", "fp32,channels_last", "--device", "cpu", "--train-crop", "16"]


def test_bench_without_darktable_writes_results_and_table(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main([*TINY, "--skip-darktable", "--darktable-from", str(tmp_path / "none.json"),
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    cpu = results["devices"]["cpu"]
    assert results["darktable"] is None
    assert cpu["machine"]["cores"] and cpu["machine"]["torch"]
    assert list(cpu["proxy"]["families"]) == list(FAMILIES)     # every family new proxies train with
    for family in ("unet", "pointwise"):
        entry = cpu["proxy"]["families"][family]
        assert entry["best"] in ("fp32", "channels_last") and entry["ms"] > 0
        assert cpu["training"][family]["samples_per_s"] > 0
        assert cpu["proxy_speedup_vs_darktable"][family] is None     # no darktable figure
    assert list(cpu["regression"]) == list(cpu["proxy"]["families"])  # every timed family, by default
    assert all(r["seconds_per_target"] > 0 for r in cpu["regression"].values()) and cpu["peak_rss_mb"] > 0
    exact = {t.name for t in PROXIES.values() if t.model == EXACT_FAMILY}    # every exact type, by type
    assert set(cpu["exact"]) == exact and len(exact) >= 15
    assert all(v["ms"] > 0 and v["with_gradient_ms"] > 0 for v in cpu["exact"].values())
    printed = capsys.readouterr().out
    assert "absent (--skip-darktable" in printed and "proxy ms per image, unet tiny (cpu" in printed

    # a later run without darktable takes the darktable figures of an earlier results file
    earlier = dict(results, darktable={"render_512": {"ms": 1000.0, "shape": [32, 32, 3], "repeats": 1},
                                       "datagen": None, "machine": {**cpu["machine"], "darktable": "5.0.1"}})
    (tmp_path / "earlier.json").write_text(json.dumps(earlier))
    assert main([*TINY, "--families", "pointwise", "--skip-darktable",
                 "--darktable-from", str(tmp_path / "earlier.json"), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["darktable"]["from_earlier_run"] == str(tmp_path / "earlier.json")
    ms = again["devices"]["cpu"]["proxy"]["families"]["pointwise"]["ms"]
    assert again["devices"]["cpu"]["proxy_speedup_vs_darktable"]["pointwise"] == pytest.approx(1000.0 / ms)
    denoise = again["devices"]["cpu"]["exact"]["denoiseprofile"]["ms"]
    assert again["devices"]["cpu"]["exact_speedup_vs_darktable"]["denoiseprofile"] == pytest.approx(1000.0 / denoise)
    assert "proxy_speedup_vs_darktable, exact denoiseprofile (cpu" in table(again)


@pytest.mark.darktable
def test_bench_with_darktable(tmp_path):
    out = tmp_path / "results.json"
    assert main([*TINY, "--families", "pointwise", "--per-image", "2", "--single", "2",
                 "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    gen = results["darktable"]["datagen"]
    assert gen["batched_samples"] == 12 and gen["batched_sps"] > 0 and gen["one_call_sps"] > 0
    assert results["darktable"]["render_512"]["ms"] > 0
    assert results["devices"]["cpu"]["proxy_speedup_vs_darktable"]["pointwise"] > 0
    assert "datagen_speedup_vs_one_call_per_sample" in table(results)


def test_regression_on_the_whole_image_lowers_the_loss():
    """``regress(crop=0)`` (the full-frame figure of the bench) fits a non-square image."""
    import torch

    from tools.bench import make_proxy
    from utils.evaluation.regress import regress
    proxy = make_proxy("pointwise", "tiny", torch.device("cpu"))
    x = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = proxy(x, torch.tensor([[0.7, 0.2]]))
    short = regress(proxy, len(proxy.sliders), proxy.scale, x, target, 1, 2, torch.Generator().manual_seed(0), crop=0)
    long = regress(proxy, len(proxy.sliders), proxy.scale, x, target, 60, 2, torch.Generator().manual_seed(0), crop=0)
    assert long.loss < short.loss


def test_bf16_variants_are_timed_by_default_only_where_the_device_computes_bf16(monkeypatch):
    import torch

    import tools.bench as bench
    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(bench, "native_bf16", lambda device, native=native: native)
        names = [v["name"] for v in bench.variants(cpu)]
        assert ("bf16" in names) == native and ("bf16+channels_last" in names) == native
        assert {"fp32", "scripts", "channels_last", "compile"} <= set(names)
        assert [v["name"] for v in bench.variants(cpu, "fp32,bf16")] == ["fp32", "bf16"]   # asked for: timed


def test_an_exact_type_that_fails_is_recorded_and_the_others_are_still_timed(monkeypatch):
    import torch

    import tools.bench as bench

    cases = list(bench.exact_cases(bench.synthetic_image(32, 32), torch.device("cpu")))[:3]

    def broken(x, u):
        raise RuntimeError("Expected all tensors to be on the same device\nmore")
    cases[1] = (cases[1][0], broken, *cases[1][2:])
    monkeypatch.setattr(bench, "exact_cases", lambda tap_in, device: iter(cases))
    out, saved = {}, []
    bench.bench_exact(None, torch.device("cpu"), 1, out, checkpoint=lambda: saved.append(len(out)))
    names = [c[0].name for c in cases]
    assert saved == [1, 2, 3]                       # written after every type
    assert out[names[1]]["error"] == "RuntimeError: Expected all tensors to be on the same device"
    assert "ms" not in out[names[1]] and out[names[0]]["ms"] > 0 and out[names[2]]["ms"] > 0
    assert bench.exact_ms(out[names[1]]) is None
    assert bench.exact_ms({"ms": 5.0, "graph_ms": 0.5}) == 0.5      # the faster of pass and graph
    results = {"darktable": None, "devices": {"cpu": {
        "machine": {"gpu": None, "cpu": "x", "cores": 2, "torch": "t"}, "proxy": {"families": {}, "model_size": "tiny"},
        "exact": out, "exact_speedup_vs_darktable": {n: None for n in names}, "training": {}, "regression": {},
        "peak_rss_mb": 1.0}}}
    assert f"exact {names[1]} (cpu; failed: RuntimeError" in bench.table(results)
