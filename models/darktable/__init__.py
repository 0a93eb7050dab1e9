"""darktable's own operations, computed exactly in torch and differentiable where darktable's
are continuous, each from its module's algorithm (``src/iop/<module>.c`` of darktable 5.0.1)
and measured against darktable's tap-outs: the bilateral grid (shadows and highlights), haze
removal, RCD demosaic, the recursive Gaussian and curves of lowpass, the box blur of bloom and
soften, the legacy colour balance and the profiled denoise. models.priors maps a proxy's sliders onto them."""
