"""Pure parsing of darktable output: versions, tap-out names, the -d params report."""
import pytest

from utils.darktable.dumps import (
    DumpName,
    check_params_accepted,
    is_raw,
    parse_dump_name,
    parse_params_report,
    parse_version,
    split_batch_log,
)
from utils.darktable.xmp import HistoryItem
from utils.errors import DarktableError

# Lines as darktable 5.0.1 printed them with -d params (tabs included).
PARAMS_LOG = """\
     1.3195 [history] successfully loaded module colorin from history
\t\t\tblendop v. 0:\tversion WRONG\tparams WRONG
\t\t\tparams v. 7:\tversion ok\tparams ok
     1.3196 [history] successfully loaded module exposure from history
\t\t\tblendop v. 13:\tversion ok\tparams WRONG
\t\t\tparams v. 6:\tversion ok\tparams {exposure}
     1.4210 [dt_dump_pipe_pfm]   dump/export/0000_exposure_cpu_in_C.pfm,  60x40, bpp=16
"""


@pytest.mark.parametrize("text, version", [
    ("darktable 5.0.1\nCopyright (C) 2012-2025", (5, 0, 1)),
    ("this is darktable 4.4.2+12~gabcdef", (4, 4, 2)),
    ("darktable 4.2.1", (4, 2, 1)),
    ("darktable 5.3.0+280~g1b2c", (5, 3, 0)),
])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_parse_version_garbage():
    with pytest.raises(ValueError):
        parse_version("command not found")


@pytest.mark.parametrize("name, parsed", [
    ("0003_exposure_cpu_out_C.pfm", DumpName(3, "exposure", "cpu", "out", "C")),
    ("0000_rawprepare_cpu_in_M.ppm", DumpName(0, "rawprepare", "cpu", "in", "M")),
    ("0012_colorbalancergb_cpu_diff_C.pfm", DumpName(12, "colorbalancergb", "cpu", "diff", "C")),
    ("10234_temperature_cpu_in_M.pfm", DumpName(10234, "temperature", "cpu", "in", "M")),
    ("output.pfm", None),
    ("0001_exposure_cpu_out_C.pfm.tmp", None),
])
def test_parse_dump_name(name, parsed):
    assert parse_dump_name(name) == parsed


def test_params_report():
    checks = parse_params_report(PARAMS_LOG.format(exposure="ok"))
    assert [(c.operation, c.version, c.version_ok, c.params_ok) for c in checks] == [
        ("colorin", 7, True, True), ("exposure", 6, True, True)]


def test_rejected_params_raise():
    item = HistoryItem("exposure", 6, b"\0" * 20)
    with pytest.raises(DarktableError, match="rejected our exposure params v6"):
        check_params_accepted([item], PARAMS_LOG.format(exposure="WRONG"))
    check_params_accepted([HistoryItem("exposure", 6, b"\0" * 24)], PARAMS_LOG.format(exposure="ok"))
    with pytest.raises(DarktableError, match="did not report loading colorbalancergb"):
        check_params_accepted([HistoryItem("colorbalancergb", 5, b"")], PARAMS_LOG.format(exposure="ok"))


def test_is_raw():
    assert is_raw("a/IMG_1.DNG") and is_raw("x.nef")
    assert not is_raw("x.tif") and not is_raw("y.JPG") and not is_raw("z.png")


BATCH_LOG = """\
     1.99 [history] successfully loaded module exposure from history
\t\t\tparams v. 6:\tversion ok\tparams ok
     2.12 [dt_dump_pipe_pfm]   /w/dump/export/0000_rawprepare_cpu_in_M.ppm,  512x512, bpp=2
     2.19 [dt_dump_pipe_pfm]   /w/dump/export/0001_exposure_cpu_in_C.pfm,  256x256, bpp=16
     2.20 [export_job] exported to `/w/out/00000.pfm'
     2.21 [history] successfully loaded module exposure from history
\t\t\tparams v. 6:\tversion ok\tparams WRONG
     2.39 [dt_dump_pipe_pfm]   /w/dump/export/0002_exposure_cpu_in_C.pfm,  256x256, bpp=16
     2.40 [export_job] exported to `/w/out/00001.pfm'
     2.50 [dt_imageio] failed to open image 00002.dng
"""


def test_split_batch_log_attributes_each_image():
    parts, rest = split_batch_log(BATCH_LOG)
    assert list(parts) == ["00000", "00001"]
    assert "0000_rawprepare" in parts["00000"] and "0001_exposure" in parts["00000"]
    assert "0002_exposure" in parts["00001"] and "0001_exposure" not in parts["00001"]
    assert parse_params_report(parts["00001"])[0].params_ok is False
    assert "failed to open image 00002" in rest
