"""Defect synthesis by masked inversion (`inversion.defects`): a defect drawn by the RGB + mask
generator exactly where a target mask says, on a normal image.

    python -m inversion defects --images normals/ --random-masks 8 --out out/syn
    python -m inversion defects --images normals/ --masks masks/ --out out/syn --space w \
        --defect distill

`get_config(arg)`, arg a comma list of: a space 'z' | 'w' | 'wplus' (default); a defect term
'stitch' (default) | 'distill' | 'none'; 'no_noise' (the latent alone, without the noise maps);
'quick' (a seconds-scale smoke run).

The objective is one engine run with three image terms, each with its own channels and mask
(`engine.ImageTerm.channels` / `mask_channel`):

  (a) mask     MSE between the generated mask channel and the target mask (+1 defect, -1 not),
               over every pixel                                              loss.mask
  (b) outside  MSE of the RGB against the normal image, weighted 1 outside the target mask
               dilated by region.dilation px, ramping to 0 over region.feather px towards it
                                                                             loss.outside
  (c) defect   inside the target mask, against a defect: 'stitch' pastes a real defect crop
               (defect.source: an MVTec AD category folder, or '' = the embedded data's
               procedural defects), 'distill' one the generator itself draws (a bank of its
               samples with a defect, the best-overlapping one moved onto the mask), 'none'
               leaves the inside free (only (a) and (b)). The matched defect is fitted by
               pixel MSE (loss.defect_mse) and a perceptual term (loss.perceptual,
               loss.perceptual_weight; D features where the LPIPS/VGG weights are missing).

Measured on the embedded model (benchmarks/defect_synthesis.py, README): with the noise maps
optimised, every space places the mask; the latent alone cannot keep the texture outside the
defect (about 21 dB in W+), so noise optimisation is on by default.
"""

import ml_collections

from configs import image2stylegan

SPACES = ('z', 'w', 'wplus')
DEFECTS = ('stitch', 'distill', 'none')
STEPS = 400
LR = 0.03              # 3x Image2StyleGAN's: the mask term needs large moves of the code
MASK_WEIGHT = 4.0      # (a): a thin crack is ~1% of the pixels; at 1 the fit drops it
OUTSIDE_WEIGHT = 1.0   # (b)
DEFECT_MSE_WEIGHT = 1.0   # (c) pixels
PERCEPTUAL_WEIGHT = 0.1   # (c) perceptual
DILATION = 2           # px of the target mask's border not held to the normal image
FEATHER = 2            # px over which the outside weight ramps from 0 to 1
BANK_SIZE = 256        # defects to match a target mask against (stitch / distill)


def get_config(arg=None):
  parts = [p for p in (arg or '').split(',') if p]
  unknown = [p for p in parts if p not in SPACES + DEFECTS + ('no_noise', 'quick')]
  if unknown:
    raise ValueError(f'unknown defect_synthesis variant(s) {unknown}; use a space {SPACES}, a '
                     f"defect term {DEFECTS}, 'no_noise' and/or 'quick'")
  space = next((p for p in parts if p in SPACES), 'wplus')
  config = image2stylegan.get_config(f'{space},quick' if 'quick' in parts else space)
  config.method = 'defect_synthesis'
  if 'quick' not in parts:
    config.steps = STEPS
  config.optimizer.lr = LR
  config.init = 'auto'               # 'auto': E(normal) where a domain-guided encoder exists
                                     # (W+; W: its mean over layers), else 'mean' (w_avg);
                                     # or 'mean' | 'random' | 'given' (init=... / --init DIR)
  config.noise.optimize = 'no_noise' not in parts
  config.noise.normalize = False     # free maps: they carry the texture the latent cannot
  config.loss.mask = MASK_WEIGHT
  config.loss.outside = OUTSIDE_WEIGHT
  config.loss.defect_mse = DEFECT_MSE_WEIGHT
  config.loss.perceptual = 'lpips'   # (c)'s perceptual term: 'lpips' | 'vgg' | 'discriminator'
  config.loss.perceptual_weight = PERCEPTUAL_WEIGHT  # | 'none'
  config.loss.fallback_weight = PERCEPTUAL_WEIGHT    # of the D-feature fallback
  config.region = ml_collections.ConfigDict()
  config.region.dilation = DILATION
  config.region.feather = FEATHER
  config.defect = ml_collections.ConfigDict()
  config.defect.mode = next((p for p in parts if p in DEFECTS), 'stitch')
  config.defect.source = ''          # stitch: an MVTec AD category folder (test/<type>/ +
                                     # ground_truth/<type>/); '' = procedural defects on the
                                     # embedded data's training crops
  config.defect.bank_size = BANK_SIZE
  config.defect.category = 'synthetic'  # export: test/<category>/, ground_truth/<category>/
  config.blend = False               # export: paste the result into the normal image outside
                                     # the feathered region (the metrics are of the raw result)
  config.metrics.lpips = 'off'
  return config
