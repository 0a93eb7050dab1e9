"""Settings of darktable neural proxies: every default in one place.

Each setting is a module-level constant with a one-line comment (units, options). Any of
them can be overridden for one run, from the environment (``DTP_<NAME>=value``) or the
command line (``--set NAME=value``, which wins); unknown names and ill-typed values are
refused. The resolved settings are saved with every dataset and run (``settings.json``).
"""
import os
from pathlib import Path

# ---------------------------------------------------------------- behaviour (seed names)
INTERACTIVE = False               # ask before each stage (generation stage 1 / 2, training)
GENERATE_STAGE_1 = True           # generate training data (stage 1) before training
GENERATE_STAGE_2 = True           # generate held-out evaluation data (stage 2)
TRAIN_PROXY = True                # train the proxy after generating data

# ---------------------------------------------------------------- data generation
STAGE_2_SAMPLES_PER_IMAGE = 10    # slider settings per evaluation image (stage 2)
TAPOUT_SIZE = 256                 # pixels; long side of stored tap-outs (0 = full resolution)
DARKTABLE_BATCH_SIZE = 32        # samples per darktable-cli process (its ~1.3 s start-up is amortised)
DARKTABLE_RETRIES = 2             # extra tries of a failed darktable call before a sample counts as failed
SEED = 0                          # seed of slider sampling (and, later, training)

# ---------------------------------------------------------------- training (seed names first)
PROXY_MODEL_BATCH_SIZE = 8        # samples per optimisation step (per process under torchrun)
PROXY_MODEL_NUM_EPOCH = 50        # epochs (one epoch = random crops covering every stage-1 sample once)
SAVE_OUTPUT_FREQ = 10             # epochs between prediction grids in NAME_predictions/
PROXY_MODEL_LR = 1e-3             # Adam learning rate at the start of the cosine schedule
PROXY_MODEL_LR_FACTOR = {"multiscale": 10}
                                  # the learning rate is PROXY_MODEL_LR times this for these
                                  # model families, unless --lr is given
PROXY_MODEL_EMA = 0.5             # epochs of steps the weights' moving average spans; the average is
                                  # validated and saved (0 = the last weights, no average)
PROXY_MODEL_SIZE = "base"         # network size preset: tiny, small, base, large
PROXY_MODEL_CROP = {"unet": 128, "pointwise": 16, "multiscale": 128}
                                  # pixels; side of the random training crops per model family
                                  # (a per-pixel net learns fastest from many small crops)
PROXY_LOSS = {"default": "l1", "exposure": "mse"}
                                  # loss per proxy type: mse, l1, grad (spatial gradients), sums like l1+0.5*grad
SAVE_CHECKPOINT_FREQ = 0          # also keep the checkpoint of every K-th epoch (0 = only last and best)
PREDICTION_SAMPLES = 4            # validation samples shown in each prediction grid
PRELOAD_MAX_MB = 4000             # load datasets into memory up to this size, else read per sample

# ---------------------------------------------------------------- evaluation (seed names)
PARAM_TUNING_NUM_ITER = 200       # gradient steps of single-proxy slider regression
PARAM_TUNING_RESTARTS = 4         # random starts per regression target (optimised together; best kept)
REGRESSION_TARGETS = 10           # stage-2 samples whose sliders are recovered (-r)
REGRESSION_CROP = 64              # pixels; side of the random crop each regression iteration fits
CREATE_ANIMATION = True           # save regression frames and an mp4 in NAME_animations/
SWEEP_FRAMES = 50                 # frames of a Sweep.py video
SWEEP_FPS = 25                    # frames per second of Sweep.py videos

# ---------------------------------------------------------------- pipeline (Pipeline_regression.py)
PIPELINE_CONFIG = "pipeline_config.txt"   # blocks of the chain, one per line (see the file)
PIPELINE_TARGETS = 10             # darktable renders whose sliders are recovered jointly (-n)
PIPELINE_REGRESSION_NUM_ITERS = 300   # gradient steps of joint slider regression (--iters)
PIPELINE_CREATE_ANIMATION = True  # save regression frames and an mp4 in pipeline_animations/
PIPELINE_ANIMATION_TARGETS = 2    # targets animated (each frame runs the whole chain on the whole image)
SAVE_ALL_OUTPUTS = True           # save every block's output at the recovered sliders (pipeline/outputs/)
PIPELINE_TRAIN_SAMPLES = 50       # -n of Darktable_proxies.py for the proxies --train-missing trains
PIPELINE_DISABLED_MODULES = ("highlights",)
                                  # default modules turned off in pipeline renders unless they are blocks
MATCH_POLISH_STEPS = 4            # --match: Levenberg-Marquardt steps on darktable's own renders after the
                                  # proxy chain's answer (0 = the chain's answer as it is)

# ---------------------------------------------------------------- darktable
DARKTABLE_PATH = ""               # darktable-cli to use; "" = DARKTABLE_CLI env, then PATH, then our own install
DARKTABLE_MIN_VERSION = (4, 4)    # --dump-pipe appeared in darktable 4.4
DARKTABLE_TIMEOUT_S = 300         # seconds before one darktable-cli call is killed
CACHE_DIR = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "darktable-proxies")
                                  # our darktable install (Debian 12), built-in images, probe results

# ---------------------------------------------------------------- built-in images
BUILTIN_IMAGE_LONG_SIDE = 512     # pixels; long side of the built-in raw DNGs
BUILTIN_IMAGES_VERSION = 1        # bump to rebuild the cached built-in images

# ---------------------------------------------------------------- folders
IMAGE_ROOT_DIR = "runs"           # ROOT: datasets, weights, predictions, params, reports
