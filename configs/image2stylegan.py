"""Image2StyleGAN (Abdal et al. 2019): Adam, lr 0.01, 5000 steps from the mean w.

    python -m inversion invert --images examples --method wplus --out out/i2s
    python -m inversion invert --images examples --method w --steps 1000 --out out/i2s_w \
        --config.optimizer.lr=0.02
    python -m inversion invert --images examples --method wplus --out /tmp/q --steps 20  # smoke

`get_config(arg)`: arg = 'z' | 'w' | 'wplus' (default) | 'wplus_noise', optionally with ',quick'
(e.g. 'w,quick': 20 steps, 1000 w samples). The objective is the paper's: pixel MSE (weight 1)
plus the VGG16 perceptual loss on conv1_1, conv1_2, conv3_2, conv4_2 (weight 1). Without VGG16
weights on the machine the perceptual term falls back to the checkpoint's discriminator features
(`loss.fallback`); 'wplus_noise' also optimises the noise maps (Image2StyleGAN++-style), starting
from the generator's stored maps, re-normalised every step, without the NVlabs autocorrelation
regulariser (`--config.noise.regularize_weight=1e5` turns it on; configs/projector.py uses it).

This file also defines every field the inversion engine reads (configs/projector.py starts from
it), one per line with its meaning.
"""

import ml_collections

SPACES = ('z', 'w', 'wplus', 'wplus_noise')
LR = 0.01          # Image2StyleGAN: Adam, learning rate 0.01
STEPS = 5000       # Image2StyleGAN: 5000 iterations
W_AVG_SAMPLES = 10_000  # NVlabs projector: w statistics from 10k samples


def get_config(arg=None):
  parts = [p for p in (arg or '').split(',') if p]
  space = next((p for p in parts if p in SPACES), 'wplus')
  unknown = [p for p in parts if p not in SPACES + ('quick',)]
  if unknown:
    raise ValueError(f'unknown image2stylegan variant(s) {unknown}; use one of {SPACES}, '
                     "optionally with ',quick'")
  config = ml_collections.ConfigDict()
  config.method = 'image2stylegan'
  config.space = 'wplus' if space == 'wplus_noise' else space  # 'z' | 'w' | 'wplus'
  config.steps = STEPS               # optimisation steps per image
  config.chunk_size = 100            # steps per compiled chunk (progress/NaN check/checkpoint)
  config.micro_batch = 0             # images vectorised together per step; 0 = auto (1 on CPU,
                                     # the whole batch on GPU/TPU; EngineSpec.micro_batch)
  config.checkpoint_every = 1        # folder jobs: checkpoint every N chunks (kill loses <= N)
  config.seed = 0                    # PRNG seed (random init, noise, projector w noise)

  # Initialisation.
  config.init = 'mean'               # 'mean' (w_avg; Z: the sampled z nearest it) | 'random'
                                     # (z ~ N(0, I) per image) | 'given' (init=... / --init)
  config.w_avg_samples = W_AVG_SAMPLES  # samples for w_std / w_avg (when the buffer is zero,
                                        # or a class's mean w with config.label)
  config.label = ''                  # conditional generators: class name or index ('' = none);
                                     # maps z in Z space, and 'mean' starts at the class's mean w

  # Optimiser.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'adam'     # 'adam' | 'sgd'
  config.optimizer.lr = LR           # peak learning rate
  config.optimizer.b1 = 0.9          # Adam beta1 (sgd: momentum, 0 = none)
  config.optimizer.b2 = 0.999        # Adam beta2
  config.optimizer.eps = 1e-8        # Adam epsilon
  config.optimizer.schedule = 'constant'  # 'constant' | 'projector' (cosine down, linear up)
  config.optimizer.rampdown = 0.25   # projector schedule: fraction of steps ramping down
  config.optimizer.rampup = 0.05     # projector schedule: fraction of steps ramping up

  # Perturbation of w (NVlabs projector); 0 = off.
  config.latent_noise = ml_collections.ConfigDict()
  config.latent_noise.factor = 0.0   # initial std of the noise added to w, in units of w_std
  config.latent_noise.ramp = 0.75    # fraction of steps after which it is 0 (quadratic decay)

  # Noise maps.
  config.noise = ml_collections.ConfigDict()
  config.noise.optimize = space == 'wplus_noise'  # also optimise the per-layer noise maps
  config.noise.init = 'const'        # 'const' (the generator's stored maps) | 'random'
  config.noise.normalize = True      # re-normalise maps to zero mean, unit variance each step
  config.noise.regularize_weight = 0.0  # NVlabs autocorrelation regulariser weight (its
                                     # projector: 1e5); 0 = pure reconstruction, as
                                     # Image2StyleGAN++ optimises noise
  config.noise.mode = 'const'        # noise of layers not optimised: 'const' | 'none'

  # Loss. Image terms see config.loss.channels of both images ('rgb': channels [:3], the mask
  # channel of an RGB + mask generator is ignored; 'all': every channel).
  config.loss = ml_collections.ConfigDict()
  config.loss.channels = 'rgb'       # 'rgb' | 'all'
  config.loss.mse = 1.0              # pixel MSE weight (0 = off)
  config.loss.perceptual = 'vgg'     # 'vgg' | 'lpips' | 'discriminator' | 'none'
  config.loss.perceptual_weight = 1.0  # weight of the perceptual term
  config.loss.fallback = 'discriminator'  # weights missing: 'discriminator' | 'none' | 'error'
  config.loss.discriminator_layers = 'auto'  # D blocks ('b32,b16'); 'auto' = all above 4x4
  config.loss.vgg_weights = ''       # VGG16 file; '' = $STYLEGAN_INV_VGG16 / cache folder
  config.loss.lpips_weights = ''     # LPIPS trunk file; '' = env / cache folder

  # Metrics.
  config.metrics = ml_collections.ConfigDict()
  config.metrics.lpips = 'auto'      # 'auto' (where weights exist) | 'on' | 'off'

  if 'quick' in parts:               # seconds-scale smoke run
    config.steps = 20
    config.chunk_size = 10
    config.w_avg_samples = 1000
  return config
