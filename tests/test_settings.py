"""Per-run overrides of Constants: environment and --set, type-checked."""
import pytest

import Constants
from utils.errors import UserError
from utils.settings import parse_value, resolve


def test_defaults_include_the_seed_names():
    settings = resolve([], environ={})
    for name in ("INTERACTIVE", "GENERATE_STAGE_1", "GENERATE_STAGE_2", "TRAIN_PROXY",
                 "PROXY_MODEL_BATCH_SIZE", "PROXY_MODEL_NUM_EPOCH", "SAVE_OUTPUT_FREQ",
                 "PARAM_TUNING_NUM_ITER", "CREATE_ANIMATION", "PIPELINE_CREATE_ANIMATION"):
        assert settings[name] == getattr(Constants, name)


def test_command_line_beats_environment():
    settings = resolve(["PROXY_MODEL_BATCH_SIZE=4", "GENERATE_STAGE_2=false"],
                       environ={"DTP_PROXY_MODEL_BATCH_SIZE": "16", "DTP_INTERACTIVE": "yes",
                                "HOME": "/x"})
    assert settings["PROXY_MODEL_BATCH_SIZE"] == 4
    assert settings["GENERATE_STAGE_2"] is False and settings["INTERACTIVE"] is True


@pytest.mark.parametrize("overrides, environ, message", [
    (["NO_SUCH=1"], {}, "unknown setting 'NO_SUCH' in --set"),
    ([], {"DTP_NO_SUCH": "1"}, "unknown setting 'NO_SUCH' in environment variable DTP_NO_SUCH"),
    (["PROXY_MODEL_NUM_EPOCH=ten"], {}, "is not a valid int"),
    (["TRAIN_PROXY=maybe"], {}, "is not a valid true or false"),
    (["TRAIN_PROXY"], {}, "write NAME=value"),
])
def test_bad_overrides_are_refused(overrides, environ, message):
    with pytest.raises(UserError, match=message):
        resolve(overrides, environ=environ)


def test_value_types():
    assert parse_value("X", "0.5", 1.0) == 0.5
    assert parse_value("X", "4,4", (4, 4)) == (4, 4)
    assert parse_value("X", "runs2", "runs") == "runs2"
    assert parse_value("X", "OFF", True) is False


def test_mapping_settings_merge():
    merged = parse_value("PROXY_LOSS", "colorbalancergb=l1+0.5*grad", {"default": "l1", "exposure": "mse"})
    assert merged == {"default": "l1", "exposure": "mse", "colorbalancergb": "l1+0.5*grad"}
    with pytest.raises(UserError):
        parse_value("PROXY_LOSS", "nonsense", {"default": "l1"})
