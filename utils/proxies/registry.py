"""The proxy types, as data: one ``ProxyType`` entry per darktable module.

Adding a darktable module means adding one entry here (and a test), never code. Structs
follow darktable's ``src/iop/<operation>.c`` (see utils/darktable/params.py for the
notation).
"""
from __future__ import annotations

import difflib
import re
from typing import Sequence

from utils.darktable.params import Struct, fields
from utils.errors import UserError
from utils.proxies.schema import ProxyType, Slider

EXPOSURE = ProxyType(
    name="exposure",
    operation="exposure",
    gui_name="exposure",
    model="pointwise",
    doc="exposure and black level: out = (in - black) / (2^-exposure - black), per pixel",
    sliders=(
        Slider("exposure", -3.0, 4.0, 0.0, doc="EV"),
        # wider black ranges let black pass 2^-exposure, which inverts the image
        Slider("black", -0.02, 0.02, 0.0, doc="black level correction"),
    ),
    # manual mode; no exposure-bias or highlight-preservation compensation, so that the output
    # depends on the sliders alone, not on the camera's EXIF.
    fixed={"mode": 0, "compensate_exposure_bias": 0, "compensate_hilite_pres": 0},
    structs=(
        Struct(6, fields("mode:i=0 black:f=0 exposure:f=0 deflicker_percentile:f=50 "
                         "deflicker_target_level:f=-4 compensate_exposure_bias:i=0")),
        Struct(7, fields("mode:i=0 black:f=0 exposure:f=0 deflicker_percentile:f=50 "
                         "deflicker_target_level:f=-4 compensate_exposure_bias:i=0 "
                         "compensate_hilite_pres:i=1")),
    ),
)


_COLORBALANCERGB_V5 = fields(
    "shadows_Y:f=0 shadows_C:f=0 shadows_H:f=0 midtones_Y:f=0 midtones_C:f=0 midtones_H:f=0 "
    "highlights_Y:f=0 highlights_C:f=0 highlights_H:f=0 global_Y:f=0 global_C:f=0 global_H:f=0 "
    "shadows_weight:f=1 white_fulcrum:f=0 highlights_weight:f=1 chroma_shadows:f=0 "
    "chroma_highlights:f=0 chroma_global:f=0 chroma_midtones:f=0 saturation_global:f=0 "
    "saturation_highlights:f=0 saturation_midtones:f=0 saturation_shadows:f=0 hue_angle:f=0 "
    "brilliance_global:f=0 brilliance_highlights:f=0 brilliance_midtones:f=0 "
    "brilliance_shadows:f=0 mask_grey_fulcrum:f=0.1845 vibrance:f=0 grey_fulcrum:f=0.1845 "
    "contrast:f=0 saturation_formula:i=1")


COLORBALANCERGB = ProxyType(
    name="colorbalancergb",
    operation="colorbalancergb",
    gui_name="color balance rgb",
    model="pointwise",
    doc="color balance rgb: global saturation, vibrance and contrast around a grey fulcrum",
    sliders=(
        Slider("saturation_global", -1.0, 1.0, 0.0),
        Slider("vibrance", -1.0, 1.0, 0.0),
        Slider("grey_fulcrum", 0.05, 0.5, 0.1845, scale="log", doc="contrast grey fulcrum"),
        Slider("contrast", -1.0, 1.0, 0.0),
    ),
    structs=(Struct(5, _COLORBALANCERGB_V5),),
)


COLORBALANCE = ProxyType(
    name="colorbalance",
    operation="colorbalance",
    gui_name="color balance",
    # computed exactly (models.darktable.colorbalance): the 120 dB cap on the held-out samples,
    # where a pointwise net reached 43.73-45.80 dB in 10 minutes
    model="exact",
    network={"prior": "colorbalance"},
    # works on Lab (L 0..100, a/b signed), as lowpass, colorize and vibrance: value scale 1
    value_scale=1.0,
    doc="color balance (not color balance rgb): input saturation, slope/offset/power of "
        "ProPhoto RGB and a contrast around a fulcrum, per pixel on Lab",
    # Mode pinned to darktable's default, slope/offset/power (1): there the factors are
    # offset = lift[0] - 1, power = 2 - gamma[0], slope = gain[0] (the colour channels
    # lift/gamma/gain[1..3] stay at their neutral 1). Ranges are the GUI's soft ranges;
    # the contrast fulcrum grey and the output saturation keep their defaults.
    sliders=(
        Slider("saturation", 0.5, 1.5, 1.0, doc="input saturation"),
        Slider("contrast", 0.5, 1.5, 1.0, doc="contrast (< 1 raises it: exponent 1 / contrast)"),
        Slider("lift_0", 0.95, 1.05, 1.0, doc="factor of lift/offset (shadows)"),
        Slider("gamma_0", 0.5, 1.5, 1.0, doc="factor of gamma/power (mid-tones)"),
        Slider("gain_0", 0.5, 1.5, 1.0, doc="factor of gain/slope (highlights)"),
    ),
    fixed={"mode": 1},
    structs=(Struct(3, fields("mode:i=1 lift:f[4]=1 gamma:f[4]=1 gain:f[4]=1 saturation:f=1 "
                              "contrast:f=1 grey:f=18 saturation_out:f=1")),),
)


TEMPERATURE = ProxyType(
    name="temperature",
    operation="temperature",
    gui_name="white balance",
    layout="mosaic",
    # darktable's operation computed exactly (models.priors): the 120 dB cap on the held-out
    # samples, where a per-photosite pointwise net reached 47.80 dB in 2 minutes
    model="exact",
    network={"prior": "temperature"},
    doc="white balance on the raw mosaic: each photosite times its colour's multiplier",
    # darktable's struct has no $DEFAULT: it loads the camera's as-shot multipliers. Our
    # defaults are typical daylight values of the built-in cameras (red 1.8-2.35, blue
    # 1.4-1.9 with green 1); ranges span 1/4..2x of them, sampled in log space (a multiplier).
    sliders=(
        Slider("red", 0.5, 4.0, 2.0, scale="log", doc="red multiplier"),
        Slider("green", 0.5, 2.0, 1.0, scale="log", doc="green multiplier (both greens)"),
        Slider("blue", 0.5, 4.0, 1.6, scale="log", doc="blue multiplier"),
    ),
    # "various" is the 4th colour of 4-colour sensors (unused by Bayer); preset 2 = "user
    # modified" (preset 4 would also move colour calibration's late correction)
    fixed={"various": 1.0, "preset": 2},
    structs=(
        Struct(3, fields("red:f=2 green:f=1 blue:f=1.6 various:f=1")),
        Struct(4, fields("red:f=2 green:f=1 blue:f=1.6 various:f=1 preset:i=2")),
    ),
)


HIGHLIGHTS = ProxyType(
    name="highlights",
    operation="highlights",
    gui_name="highlight reconstruction",
    layout="mosaic",
    # clip mode computed exactly (models.priors), where a per-photosite pointwise net reached
    # 39.36 dB in 2 minutes
    model="exact",
    network={"prior": "highlights"},
    doc="highlight reconstruction, mode 'clip highlights': out = min(in, clip x min(WB multipliers))",
    # Mode pinned to "clip" (0): pointwise and the same whether an image is first in a
    # darktable process or not. darktable 5's default "inpaint opposed" keeps image statistics
    # between the images of one process (batched renders then differ from single ones), and
    # its other sliders (strength, noise, iterations, scales, candidating, combine, recovery,
    # solid colour) are dead in clip mode, so only the threshold is sampled. The threshold
    # is in white-balanced units (x the smallest multiplier, about 1); darktable's default 1.0
    # clips nothing in the built-in images (their white-balanced peaks are 0.38..0.85), so
    # the range reaches down to 0.1 and is sampled in log space, where most photosites change.
    sliders=(Slider("clip", 0.1, 1.0, 1.0, scale="log", doc="clipping threshold (x white)"),),
    fixed={"mode": 0},
    structs=(
        Struct(4, fields("mode:i=5 blendL:f=1 blendC:f=0 strength:f=0 clip:f=1 noise_level:f=0 "
                         "iterations:i=30 scales:i=6 candidating:f=0.4 combine:f=2 recovery:i=0 "
                         "solid_color:f=0")),
    ),
)


DEMOSAIC = ProxyType(
    name="demosaic",
    operation="demosaic",
    gui_name="demosaic",
    layout="mosaic_rgb",
    baseline="bilinear",
    # darktable's RCD computed exactly (models.darktable.demosaic), where a unet reached 30.39 dB
    # in 2 minutes
    model="exact",
    network={"prior": "demosaic"},
    doc="demosaicing (RCD) of the white-balanced mosaic into camera RGB; no sliders",
    sliders=(),
    sampler=("temperature", "green"),
    # method 5 = RCD (darktable's default for Bayer sensors); no green equilibration, no
    # colour smoothing
    fixed={"demosaicing_method": 5},
    structs=(
        Struct(4, fields("green_eq:i=0 median_thrs:f=0 color_smoothing:i=0 demosaicing_method:i=5 "
                         "lmmse_refine:i=1 dual_thrs:f=0.2")),
    ),
)


_ICC = "512s=0"   # char filename[DT_IOP_COLOR_ICC_LEN]


COLORIN = ProxyType(
    name="colorin",
    operation="colorin",
    gui_name="input color profile",
    # computed exactly from each image's embedded matrix (its planes carry it: a DNG's colour
    # matrix for D65, as darktable builds its profile): 77.7-97.7 dB on the held-out cameras,
    # where a pointwise net, without the camera's matrix, reached 44.20 (the best single matrix
    # for all cameras: 43.5 mean); --model pointwise for raws other than DNG
    model="exact",
    network={"prior": "colorin"},
    traits="camera_matrix",
    # in: camera RGB (about 0..1, up to ~16 at +4 EV), out: Lab (L 0..100, a/b about -100..100).
    # asinh(x / 1): linear over the camera values and through zero, where a and b change
    # sign (with 0.01 a sign change is a jump of ~18 units), logarithmic over Lab's range
    value_scale=1.0,
    doc="input color profile: camera RGB -> Lab through the DNG's embedded colour matrix; no sliders",
    baseline="none",
    sliders=(),
    sampler=("exposure", "exposure"),
    # type 10 = embedded matrix (what darktable picks for a DNG with ColorMatrix1), perceptual
    # intent, no gamut clipping, working profile 4 = linear Rec.2020
    fixed={"type": 10, "type_work": 4},
    structs=(
        Struct(7, fields(f"type:i=10 filename:{_ICC} intent:i=0 normalize:i=0 blue_mapping:i=0 "
                         f"type_work:i=4 filename_work:{_ICC}")),
    ),
)


COLOROUT = ProxyType(
    name="colorout",
    operation="colorout",
    gui_name="output color profile",
    # computed exactly (models.fixed.ColorOut), where a pointwise net reached 22.21 dB in 2 minutes
    model="exact",
    network={"prior": "colorout"},
    # in: Lab (L 0..100, a/b about -100..100), out: display-encoded sRGB (about 0..1): as colorin
    value_scale=1.0,
    doc="output color profile: Lab -> display-encoded sRGB; no sliders",
    baseline="none",
    sliders=(),
    sampler=("colorbalancergb", "contrast"),
    fixed={"type": 1},    # 1 = sRGB, perceptual intent
    structs=(Struct(5, fields(f"type:i=1 filename:{_ICC} intent:i=0")),),
)


SHARPEN = ProxyType(
    name="sharpen",
    operation="sharpen",
    gui_name="sharpen",
    # darktable's operation computed exactly (models.priors.sharpen), where the multiscale
    # family reached 57.21-59.53 dB at the table command (identity 52.14)
    model="exact",
    learned="multiscale",
    value_scale=1.0,        # 100 measured worse here
    # with --model multiscale: its blurs are the fine ones (with the pyramid centred (expand)
    # 53.30-53.64 dB in three runs, against 54.21-54.33 bilinear), its untouched border, and a
    # gate that leaves the images it barely changes as they are (56.83-57.67 dB without the
    # gate, 57.98-59.53 with it: docs/proxies.md)
    network={"upsample": "bilinear", "border": True, "gate": True, "prior": "sharpen"},
    # it leaves a border as wide as its blur untouched, and its sigma is the radius times the
    # pipe's pixel scale: the planes bring each pixel's place and each image's scale
    positional=True,
    doc="sharpen: unsharp mask on Lab lightness",
    sliders=(
        # radii below 1 (full-resolution pixels) left 128 px renders unchanged
        Slider("radius", 1.0, 8.0, 2.0, scale="log", pixels=True, doc="blur radius of the mask"),
        Slider("amount", 0.0, 2.0, 0.5, doc="strength of the sharpening"),
        Slider("threshold", 0.0, 2.0, 0.5, doc="contrast below which nothing is sharpened (L units)"),
    ),
    structs=(Struct(1, fields("radius:f=2 amount:f=0.5 threshold:f=0.5")),),
)


GRADUATEDND = ProxyType(
    name="graduatednd",
    operation="graduatednd",
    gui_name="graduated density",
    # computed exactly from the coordinate planes (models.priors.graduatednd): the 120 dB cap on
    # the held-out samples, where a positional pointwise net reached 45.16-46.45 dB
    model="exact",
    network={"prior": "graduatednd"},
    positional=True,
    doc="graduated density: a neutral density filter over part of the frame",
    sliders=(
        Slider("density", -2.0, 3.0, 1.0, doc="EV of the filter at its dark end"),
        Slider("hardness", 0.0, 100.0, 0.0, doc="% steepness of the transition"),
        Slider("rotation", -180.0, 180.0, 0.0, scale="circular", doc="degrees"),
        Slider("offset", 0.0, 100.0, 50.0, doc="% position of the transition"),
    ),
    fixed={"hue": 0, "saturation": 0},   # neutral grey filter (hue is dead at saturation 0)
    structs=(Struct(1, fields("density:f=1 hardness:f=0 rotation:f=0 offset:f=50 hue:f=0 "
                              "saturation:f=0")),),
)


HAZEREMOVAL = ProxyType(
    name="hazeremoval",
    operation="hazeremoval",
    gui_name="haze removal",
    # darktable's operation computed exactly (models.darktable.dehaze): the 120 dB cap on the held-out
    # samples, where a unet reached 37.60 dB in the table's 10 minutes (identity 31.93)
    model="exact",
    learned="multiscale",
    network={"prior": "hazeremoval"},
    doc="haze removal: dark-channel haze estimate subtracted (negative strength adds haze)",
    sliders=(
        # haze removal only (negative strengths add haze, and there distance acts not at all);
        # distances above the default 0.2 gave the same output as 0.2 on the test images
        Slider("strength", 0.0, 1.0, 0.2, doc="amount of haze removed"),
        Slider("distance", 0.0, 0.2, 0.2, doc="how far into the scene haze is removed"),
    ),
    fixed={"compatibility_mode": 0},
    structs=(Struct(2, fields("strength:f=0.2 distance:f=0.2 compatibility_mode:i=0")),),
)


_DENOISE_X = ",".join(f"{k / 6:.9g}" for _ in range(6) for k in range(7))


DENOISEPROFILE = ProxyType(
    name="denoiseprofile",
    operation="denoiseprofile",
    gui_name="denoise (profiled)",
    # computed exactly (models.darktable.denoise) from each image's white balance, full size and
    # pipe scale: the 120 dB cap on the held-out samples, where the multiscale family reached
    # 43.64-43.75 dB at the table's 10 minutes, unet 42.01, identity 42.33 (docs/proxies.md);
    # --model multiscale for raws other than DNG
    model="exact",
    learned="multiscale",
    network={"prior": "denoiseprofile"},
    traits="white_balance",
    doc="denoise (profiled), wavelets mode, with the generic noise profile (a[0] = -1); "
        "bias correction changes the output by < 1e-3 of its mean: not learned",
    sliders=(
        Slider("strength", 0.1, 10.0, 1.0, scale="log", doc="denoising strength"),
        Slider("shadows", 0.1, 1.8, 1.0, doc="preserve shadows"),
    ),
    fixed={"mode": 1},
    structs=(Struct(11, fields(
        "radius:f=1 nbhood:f=7 strength:f=1 shadows:f=1 bias:f=0 scattering:f=0 "
        "central_pixel_weight:f=0.1 overshooting:f=1 a:f[3]=-1,0,0 b:f[3]=0 mode:i=1 "
        f"x:f[42]={_DENOISE_X} y:f[42]=0.5 wb_adaptive_anscombe:i=1 "
        "fix_anscombe_and_nlmeans_norm:i=1 use_new_vst:i=1 wavelet_color_mode:i=1")),),
)


LOWPASS = ProxyType(
    name="lowpass",
    operation="lowpass",
    gui_name="lowpass",
    # darktable's operation computed exactly (models.darktable.lowpass.lowpass_lab): its recursive Gaussian and
    # curves, where the multiscale family reached 37.43-38.79 dB at the table command
    model="exact",
    learned="multiscale",
    network={"prior": "lowpass"},
    # the blur's sigma is the radius times the pipe's pixel scale: the planes bring each image's
    positional=True,
    value_scale=100.0,      # L's range: bright errors count as dark ones (docs/proxies.md)
    doc="lowpass: gaussian blur of Lab with contrast, brightness and saturation",
    sliders=(
        Slider("radius", 1.0, 50.0, 10.0, scale="log", pixels=True, doc="blur radius"),
        Slider("contrast", -1.0, 2.0, 1.0, doc="contrast of the blurred image"),
        Slider("brightness", -1.0, 1.0, 0.0),
        Slider("saturation", 0.0, 2.0, 1.0),
    ),
    fixed={"order": 0, "lowpass_algo": 0},   # gaussian
    structs=(Struct(4, fields("order:i=0 radius:f=10 contrast:f=1 brightness:f=0 saturation:f=1 "
                              "lowpass_algo:i=0 unbound:i=1")),),
)


BLOOM = ProxyType(
    name="bloom",
    operation="bloom",
    gui_name="bloom",
    # darktable's operation computed exactly (models.darktable.boxblur): the 120 dB cap on the
    # held-out samples, where the multiscale family reached 42.96-44.03 dB in 10 minutes
    model="exact",
    learned="multiscale",
    # the glow's radius follows the pipe's pixel scale: the planes bring each image's
    positional=True,
    value_scale=100.0,      # L's range: bright errors count as dark ones (docs/proxies.md)
    # with --model multiscale: its glow is a large blur, 36.85 dB without fine blurs, 34.76 with;
    # the lightness it gathers above the threshold, exact, for the network to blur: 44.03 dB,
    # 38.51-39.46 without
    network={"fine": 0, "glow": True, "prior": "bloom"},
    doc="bloom: blurred highlights added to Lab lightness",
    sliders=(
        Slider("size", 5.0, 60.0, 20.0, scale="log", pixels=True,
               doc="% size of the glow (of 256 px at full size)"),
        Slider("threshold", 50.0, 100.0, 90.0, doc="% lightness above which pixels glow"),
        Slider("strength", 0.0, 100.0, 25.0, doc="% strength of the glow"),
    ),
    structs=(Struct(1, fields("size:f=20 threshold:f=90 strength:f=25")),),
)


COLORIZE = ProxyType(
    name="colorize",
    operation="colorize",
    gui_name="colorize",
    model="pointwise",
    value_scale=1.0,
    doc="colorize: a uniform colour mixed into Lab",
    # its output is one affine map of its input per image: the per-pixel MLP after it only
    # learnt the training settings (49.93 dB without it, 41.15 with; docs/proxies.md)
    network={"mlp": False},
    sliders=(
        Slider("hue", 0.0, 1.0, 0.0, scale="circular", hsl="hue"),
        Slider("saturation", 0.0, 1.0, 0.5, hsl="saturation"),
        Slider("source_lightness_mix", 0.0, 100.0, 50.0, doc="% of the source lightness kept"),
        Slider("lightness", 0.0, 100.0, 50.0, hsl="lightness"),
    ),
    # version: darktable's init sets the module version, 2 (1 selects an old colour matrix)
    structs=(Struct(2, fields("hue:f=0 saturation:f=0.5 source_lightness_mix:f=50 lightness:f=50 "
                              "version:i=2")),),
)


SOFTEN = ProxyType(
    name="soften",
    operation="soften",
    gui_name="soften",
    # darktable's operation computed exactly (models.darktable.boxblur): 114-120 dB on the
    # held-out samples, where the multiscale family reached 40.23 dB in 10 minutes
    model="exact",
    learned="multiscale",
    network={"prior": "soften"},
    # its radius is a share of the full image's diagonal at the pipe's scale: the planes bring
    # each image's shape and scale
    positional=True,
    scaled=True,
    doc="soften: a brightened, saturated blur (Orton effect) mixed in",
    sliders=(
        Slider("size", 5.0, 100.0, 50.0, scale="log", doc="% blur size"),
        Slider("saturation", 0.0, 100.0, 100.0, doc="% saturation of the blur"),
        Slider("brightness", -2.0, 2.0, 0.33, doc="EV of the blur"),
        Slider("amount", 0.0, 100.0, 50.0, doc="% mix"),
    ),
    structs=(Struct(1, fields("size:f=50 saturation:f=100 brightness:f=0.33 amount:f=50")),),
)


FILMICRGB = ProxyType(
    name="filmicrgb",
    operation="filmicrgb",
    gui_name="filmic rgb",
    model="pointwise",
    doc="filmic rgb: log tone mapping to display (v7 colour science, power norm)",
    sliders=(
        Slider("white_point_source", 2.0, 8.0, 4.0, doc="white relative exposure (EV)"),
        Slider("black_point_source", -14.0, -4.0, -8.0, doc="black relative exposure (EV)"),
        Slider("contrast", 0.7, 2.0, 1.0),
        Slider("latitude", 0.01, 50.0, 0.01, scale="log", doc="% linear part of the curve"),
    ),
    # no highlight reconstruction, no highlight noise (random), hardness set automatically;
    # grey_point_source and balance barely change the output (< 1e-4): not learned
    fixed={"enable_highlight_reconstruction": 0, "noise_level": 0, "auto_hardness": 1},
    structs=(Struct(6, fields(
        "grey_point_source:f=18.45 black_point_source:f=-8 white_point_source:f=4 "
        "reconstruct_threshold:f=0 reconstruct_feather:f=3 reconstruct_bloom_vs_details:f=100 "
        "reconstruct_grey_vs_color:f=100 reconstruct_structure_vs_texture:f=0 security_factor:f=0 "
        "grey_point_target:f=18.45 black_point_target:f=0.01517634 white_point_target:f=100 "
        "output_power:f=4 latitude:f=0.01 contrast:f=1 saturation:f=0 balance:f=0 "
        "noise_level:f=0.2 preserve_color:i=3 version:i=4 auto_hardness:i=1 custom_grey:i=0 "
        "high_quality_reconstruction:i=1 noise_distribution:i=1 shadows:i=0 highlights:i=0 "
        "compensate_icc_black:i=0 spline_version:i=2 enable_highlight_reconstruction:i=0")),),
)


CENSORIZE = ProxyType(
    name="censorize",
    operation="censorize",
    gui_name="censorize",
    model="exact",     # darktable's blur and pixelation (models.priors.censorize); learned: multiscale
    learned="multiscale",
    positional=True,   # the pixelation grid is fixed to the image
    # the pixelation, a step function of its slider, is darktable's own in every family; the
    # blur is learned by the others
    network={"pixelate": "pixelate", "prior": "censorize"},
    doc="censorize: blur, then pixelate (noise off: it is random; the output blur radius_2 "
        "made two identical renders differ in darktable 5.0.1)",
    sliders=(
        Slider("radius_1", 0.0, 20.0, 0.0, pixels=True, doc="input blur radius"),
        Slider("pixelate", 0.0, 20.0, 0.0, pixels=True, doc="pixelation radius"),
    ),
    fixed={"noise": 0, "radius_2": 0},
    structs=(Struct(1, fields("radius_1:f=0 pixelate:f=0 radius_2:f=0 noise:f=0")),),
)


SIGMOID = ProxyType(
    name="sigmoid",
    operation="sigmoid",
    gui_name="sigmoid",
    model="pointwise",
    doc="sigmoid: log-logistic tone mapping to display, per channel with hue preservation",
    sliders=(
        Slider("middle_grey_contrast", 0.7, 3.0, 1.5, doc="contrast"),
        Slider("contrast_skewness", -1.0, 1.0, 0.0, doc="skew"),
        Slider("hue_preservation", 0.0, 100.0, 100.0, doc="% preserve hue"),
        Slider("display_black_target", 0.0, 1.0, 0.0152, doc="% target black"),
    ),
    fixed={"color_processing": 0, "base_primaries": 0},   # per channel, working profile
    structs=(Struct(3, fields(
        "middle_grey_contrast:f=1.5 contrast_skewness:f=0 display_white_target:f=100 "
        "display_black_target:f=0.0152 color_processing:i=0 hue_preservation:f=100 red_inset:f=0 "
        "red_rotation:f=0 green_inset:f=0 green_rotation:f=0 blue_inset:f=0 blue_rotation:f=0 "
        "purity:f=0 base_primaries:i=0")),),
)


BILAT = ProxyType(
    name="bilat",
    operation="bilat",
    gui_name="local contrast",
    # darktable's local laplacian computed exactly (models.darktable.locallaplacian), where the
    # multiscale family reached 41.07-41.53 dB at the table command (identity 32.89)
    model="exact",
    learned="multiscale",
    value_scale=100.0,      # L's range: bright errors count as dark ones (docs/proxies.md)
    # learned: 40.82 dB without fine blurs, 40.04 with (docs/proxies.md)
    network={"fine": 0, "prior": "bilat"},
    doc="local contrast, local laplacian mode, on Lab",
    sliders=(
        Slider("detail", -0.5, 1.5, 0.25, doc="detail (0.25 = 125 %)"),
        Slider("sigma_r", 0.0, 1.0, 0.5, doc="highlights"),
        Slider("sigma_s", 0.0, 1.0, 0.5, doc="shadows"),
        Slider("midtone", 0.1, 1.0, 0.5, doc="midtone range"),
    ),
    fixed={"mode": 1},
    structs=(Struct(3, fields("mode:i=1 sigma_r:f=0.5 sigma_s:f=0.5 detail:f=0.25 midtone:f=0.5")),),
)


SHADHI = ProxyType(
    name="shadhi",
    operation="shadhi",
    gui_name="shadows and highlights",
    # darktable's operation itself, exact (models.priors.shadhi): 147-158 dB on the held-out
    # samples; the multiscale family reached 41.35-41.45 dB (docs/proxies.md)
    model="exact",
    learned="multiscale",
    # the bilateral grid's cells are fixed to the image, and its size in cells follows the
    # pipe's pixel scale: the planes bring each image's (the prior uses that alone)
    positional=True,
    value_scale=100.0,      # L's range: bright errors count as dark ones (docs/proxies.md)
    # the exact family takes the prior; the multiscale family (--model multiscale) the outputs
    # the sliders weight: its change is close to linear in them (41.45 dB with, 40.55 without)
    network={"slider_outputs": 5, "prior": "shadhi"},
    doc="shadows and highlights, bilateral filter, on Lab",
    sliders=(
        Slider("shadows", -100.0, 100.0, 50.0),
        Slider("highlights", -100.0, 100.0, -50.0),
        Slider("whitepoint", -5.0, 5.0, 0.0, doc="white point adjustment"),
        Slider("radius", 10.0, 200.0, 100.0, scale="log", pixels=True, doc="filter radius"),
        Slider("compress", 0.0, 100.0, 50.0, doc="% compression of the effect toward midtones"),
    ),
    fixed={"shadhi_algo": 1},
    structs=(Struct(5, fields(
        "order:i=0 radius:f=100 shadows:f=50 whitepoint:f=0 highlights:f=-50 reserved2:f=0 "
        "compress:f=50 shadows_ccorrect:f=100 highlights_ccorrect:f=50 flags:I=127 "
        "low_approximation:f=0.000001 shadhi_algo:i=1")),),
)


VIGNETTE = ProxyType(
    name="vignette",
    operation="vignette",
    gui_name="vignetting",
    # darktable's operation computed exactly from the coordinate planes (models.priors.vignette):
    # 144-167 dB on the held-out samples, where a positional pointwise net reached 44.22-48.02
    model="exact",
    network={"prior": "vignette"},
    positional=True,
    doc="vignetting: brightness and saturation falling off from the centre",
    sliders=(
        Slider("scale", 0.0, 100.0, 80.0, doc="% fall-off start"),
        Slider("falloff_scale", 5.0, 100.0, 50.0, doc="% fall-off radius"),
        Slider("brightness", -1.0, 1.0, -0.5),
        Slider("saturation", -1.0, 1.0, -0.5),
    ),
    fixed={"dithering": 0, "autoratio": 0},
    structs=(Struct(4, fields(
        "scale:f=80 falloff_scale:f=50 brightness:f=-0.5 saturation:f=-0.5 center_x:f=0 "
        "center_y:f=0 autoratio:i=0 whratio:f=1 shape:f=1 dithering:i=0 unbound:i=1")),),
)


CHANNELMIXERRGB = ProxyType(
    name="channelmixerrgb",
    operation="channelmixerrgb",
    gui_name="color calibration",
    model="pointwise",
    doc="color calibration: the RGB mixing matrix (row <out>_<in>), no chromatic adaptation",
    sliders=(
        Slider("red_0", 0.0, 2.0, 1.0, doc="red of the red output"),
        Slider("red_1", -1.0, 1.0, 0.0, doc="green of the red output"),
        Slider("green_1", 0.0, 2.0, 1.0, doc="green of the green output"),
        Slider("green_2", -1.0, 1.0, 0.0, doc="blue of the green output"),
        Slider("blue_0", -1.0, 1.0, 0.0, doc="red of the blue output"),
        Slider("blue_2", 0.0, 2.0, 1.0, doc="blue of the blue output"),
    ),
    # adaptation 4 = none (bypass); rows not normalised, so each slider acts alone
    fixed={"adaptation": 4, "normalize_R": 0, "normalize_G": 0, "normalize_B": 0},
    structs=(Struct(3, fields(
        "red:f[4]=1,0,0,0 green:f[4]=0,1,0,0 blue:f[4]=0,0,1,0 saturation:f[4]=0 lightness:f[4]=0 "
        "grey:f[4]=0 normalize_R:i=0 normalize_G:i=0 normalize_B:i=0 normalize_sat:i=0 "
        "normalize_light:i=0 normalize_grey:i=1 illuminant:i=2 illum_fluo:i=2 illum_led:i=4 "
        "adaptation:i=1 x:f=0.333 y:f=0.333 temperature:f=5003 gamut:f=1 clip:i=1 version:i=2")),),
)


VELVIA = ProxyType(
    name="velvia",
    operation="velvia",
    gui_name="velvia",
    model="pointwise",
    doc="velvia: saturation boost weighted toward less saturated pixels",
    sliders=(
        Slider("strength", 0.0, 100.0, 25.0, doc="%"),
        Slider("bias", 0.0, 1.0, 1.0, doc="mid-tones bias"),
    ),
    structs=(Struct(2, fields("strength:f=25 bias:f=1")),),
)


VIBRANCE = ProxyType(
    name="vibrance",
    operation="vibrance",
    gui_name="vibrance",
    model="pointwise",
    value_scale=1.0,
    doc="vibrance (deprecated in the GUI, still processed): saturation of dull Lab colours",
    sliders=(Slider("amount", 0.0, 100.0, 25.0, doc="%"),),
    structs=(Struct(2, fields("amount:f=25")),),
)


TONEEQUAL = ProxyType(
    name="toneequal",
    operation="toneequal",
    gui_name="tone equalizer",
    # darktable's operation computed exactly (models.darktable.toneequal), where the multiscale
    # family reached 40.95-41.53 dB at the table command (identity 16.28)
    model="exact",
    learned="multiscale",
    doc="tone equalizer: EV gains per exposure band of a guided-filter luminance mask",
    # learned: its gain is a curve the sliders set of a guided filter of the luminance, darktable's a gain
    # linear in 2^slider (Slider.ev): 41.25-41.38 dB with that curve and outputs the sliders
    # weight; 36.43-37.06 with an exp curve the MLP sets, 33.47 with the outputs alone, 26.62 without
    network={"slider_outputs": 5, "curve": 12, "curve_gain": True, "prior": "toneequal"},
    sliders=(
        Slider("blacks", -2.0, 2.0, 0.0, ev=True, doc="EV at -5 EV"),
        Slider("shadows", -2.0, 2.0, 0.0, ev=True, doc="EV at -4 EV"),
        Slider("midtones", -2.0, 2.0, 0.0, ev=True, doc="EV at -3 EV"),
        Slider("highlights", -2.0, 2.0, 0.0, ev=True, doc="EV at -2 EV"),
        Slider("whites", -2.0, 2.0, 0.0, ev=True, doc="EV at -1 EV"),
    ),
    structs=(Struct(2, fields(
        "noise:f=0 ultra_deep_blacks:f=0 deep_blacks:f=0 blacks:f=0 shadows:f=0 midtones:f=0 "
        "highlights:f=0 whites:f=0 speculars:f=0 blending:f=5 smoothing:f=1.41421356 "
        "feathering:f=1 quantization:f=0 contrast_boost:f=0 exposure_boost:f=0 details:i=4 "
        "method:i=4 iterations:i=1")),),
)


PROXIES: dict[str, ProxyType] = {p.name: p for p in (
    EXPOSURE, COLORBALANCERGB, COLORBALANCE, TEMPERATURE, HIGHLIGHTS, DEMOSAIC, COLORIN, COLOROUT, SHARPEN,
    GRADUATEDND, HAZEREMOVAL, DENOISEPROFILE, LOWPASS, BLOOM, COLORIZE, SOFTEN, FILMICRGB, CENSORIZE,
    SIGMOID, BILAT, SHADHI, VIGNETTE, CHANNELMIXERRGB, VELVIA, VIBRANCE, TONEEQUAL)}


def get_proxy(name: str) -> ProxyType:
    try:
        return PROXIES[name]
    except KeyError:
        near = nearest_types(name)
        hint = ("; nearest: " + ", ".join(f"{t} ({PROXIES[t].gui_name})" for t in near)) if near else ""
        raise UserError(f"unknown proxy type {name!r}{hint}; all types: {', '.join(PROXIES)} "
                        "(see --list-proxies)") from None


def _key(name: str) -> str:
    """A name compared loosely: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def nearest_types(name: str, most: int = 5) -> list[str]:
    """Up to ``most`` proxy types a mistyped ``name`` may mean, nearest first: types it is a
    prefix of or that are a prefix of it (``colorbal``, ``colorbalancergb_contrast``), types
    spelled alike (``colourbalance``) and types whose darktable GUI name it resembles
    (``"local contrast"`` -> bilat); case, spaces and underscores do not count."""
    key = _key(name)
    if not key:
        return []

    def like(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    scored = []
    for t, proxy in PROXIES.items():
        by_name, by_gui = like(key, t), like(key, _key(proxy.gui_name))
        if t.startswith(key) or key.startswith(t) or by_name >= 0.6 or by_gui >= 0.8:
            scored.append((max(by_name, by_gui), t))
    return [t for _, t in sorted(scored, key=lambda st: -st[0])][:most]


def see_also(proxy: ProxyType) -> list[str]:
    """The other types whose names are a prefix of ``proxy``'s or start with it (the names
    easiest to confuse: colorbalance, colorbalancergb)."""
    return [t for t in PROXIES if t != proxy.name and (t.startswith(proxy.name) or proxy.name.startswith(t))]


def sampler_of(proxy: ProxyType) -> tuple[ProxyType, Slider] | None:
    """The upstream proxy type and slider a slider-less ``proxy`` varies, or None."""
    if proxy.sampler is None:
        return None
    upstream = get_proxy(proxy.sampler[0])
    return upstream, upstream.slider(proxy.sampler[1])


def describe(proxy: ProxyType) -> str:
    """One line: ``<name>  <slider>=<lo>..<hi> ...  # <GUI name>[; see also <type>, ...]``
    (the --list-proxies format), names in a column; ``(log)`` marks a slider sampled in log
    space, ``(circular)`` one whose two ends are the same setting; a type without sliders shows the slider of its sampler as
    ``sampler:<type>.<slider>=<lo>..<hi>``. After ``  # ``: the module's name in darktable's
    GUI and the types with names easy to confuse (``see_also``)."""
    sliders = " ".join(f"{s.name}={s.lo:g}..{s.hi:g}{'' if s.scale == 'linear' else f'({s.scale})'}"
                       for s in proxy.sliders)
    sampler = sampler_of(proxy)
    if not sliders and sampler is not None:
        upstream, s = sampler
        sliders = f"sampler:{upstream.name}.{s.name}={s.lo:g}..{s.hi:g}"   # no sliders of its own
    others = see_also(proxy)
    note = proxy.gui_name + (f"; see also {', '.join(others)}" if others else "")
    return f"{proxy.name:<16} {sliders}" + (f"  # {note}" if note else "")


def proxy_name(proxy: str, sliders: Sequence[Slider], custom: str | None = None) -> str:
    """A proxy's NAME: ``custom`` (``-c``) if given, else ``<proxy>_<slider1>_<slider2>...``."""
    if custom:
        if "/" in custom or custom.startswith("."):
            raise UserError(f"-c {custom!r}: a proxy name must not contain '/' or start with '.'")
        return custom
    return "_".join([proxy, *(s.name for s in sliders)])


def split_proxy_name(name: str) -> tuple[ProxyType, list[str]]:
    """A default proxy NAME (``<type>`` or ``<type>_<slider>_<slider>...``, as
    Darktable_proxies.py names proxies) -> its type and sliders (all, for a bare type)."""
    for type_name in sorted(PROXIES, key=len, reverse=True):
        if name == type_name:
            return PROXIES[type_name], [s.name for s in PROXIES[type_name].sliders]
        if name.startswith(type_name + "_"):
            rest, sliders = name[len(type_name) + 1:], []
            known = sorted((s.name for s in PROXIES[type_name].sliders), key=len, reverse=True)
            while rest:
                match = next((s for s in known if rest == s or rest.startswith(s + "_")), None)
                if match is None:
                    break
                sliders.append(match)
                rest = rest[len(match) + 1:]
            if not rest:
                return PROXIES[type_name], sliders
    raise UserError(f"cannot tell the proxy type of {name!r}: name a trained proxy, or a proxy "
                    f"type ({', '.join(PROXIES)}) optionally followed by _<slider>... ")
