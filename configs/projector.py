"""NVlabs stylegan2-ada-pytorch `projector.py`: W space plus noise maps, LPIPS, 1000 steps.

    python -m inversion invert --images examples --method projector --out out/proj
    python -m inversion invert --images examples --method projector --out /tmp/q --config.steps=20

Adam (0.9, 0.999), lr 0.1 with a cosine ramp-down over the last 25 % of steps and a linear
ramp-up over the first 5 %; Gaussian noise on w with std 0.05 * w_std * max(0, 1 - t / 0.75)^2
(w_std from 10k mapped samples); noise maps start random, are re-normalised every step and
regularised (multi-scale autocorrelation, weight 1e5); the loss is LPIPS (VGG16, images larger
than 256 area-downsampled to 256) and no pixel term. Differences from NVlabs: the initial w is the
generator's tracked w_avg (NVlabs: the mean of its 10k samples; we use that only when the buffer
is zero); without LPIPS weights the perceptual term falls back to discriminator features
(`loss.fallback`). `get_config('quick')` is a 20-step smoke variant. Fields:
configs/image2stylegan.py.
"""

from configs import image2stylegan

LR = 0.1                  # initial_learning_rate
STEPS = 1000              # num_steps
RAMPDOWN = 0.25           # lr_rampdown_length
RAMPUP = 0.05             # lr_rampup_length
NOISE_FACTOR = 0.05       # initial_noise_factor
NOISE_RAMP = 0.75         # noise_ramp_length
NOISE_REG = 1e5           # regularize_noise_weight


def get_config(arg=None):
  if arg not in (None, 'quick'):
    raise ValueError(f"unknown projector variant {arg!r}; use 'quick' or nothing")
  config = image2stylegan.get_config('w')
  config.method = 'projector'
  config.steps = STEPS

  # Optimiser.
  config.optimizer.lr = LR
  config.optimizer.schedule = 'projector'
  config.optimizer.rampdown = RAMPDOWN
  config.optimizer.rampup = RAMPUP

  # w perturbation and noise maps.
  config.latent_noise.factor = NOISE_FACTOR
  config.latent_noise.ramp = NOISE_RAMP
  config.noise.optimize = True
  config.noise.init = 'random'
  config.noise.normalize = True
  config.noise.regularize_weight = NOISE_REG

  # Loss: LPIPS only.
  config.loss.mse = 0.0
  config.loss.perceptual = 'lpips'

  if arg == 'quick':
    config.steps = 20
    config.chunk_size = 10
    config.w_avg_samples = 1000
  return config
