"""In-Domain GAN Inversion (idinvert; Zhu et al., ECCV 2020): the domain-guided encoder's
training, and in-domain optimisation on the engine.

    python -m inversion train-encoder --config idinvert --checkpoint G --data DIR --workdir runs/e
    python -m inversion export-encoder --workdir runs/e --out encoders/mine
    python -m inversion invert --method idinvert --encoder encoders/mine --images DIR --out out/i
    python -m inversion invert --method encoder --encoder encoders/mine --images DIR --out out/e

`get_config(arg)`, arg a comma list:
  ''            in-domain optimisation (the paper's defaults: W+, Adam lr 0.01, 100 steps from
                E(x), pixel MSE 1 + VGG16 conv4_3 5e-5 + lambda_dom 2 ||w - E(G(w))||^2)
  'encoder'     E alone: E(x), zero steps (the same outputs as an inversion)
  'train'       train E on real images against the frozen G, with D beside it (the paper's
                objective and defaults, `inversion/encoders/train.py`)
  'train_fakes' train E by regressing the codes of sampled images, ||E(G(w)) - w||^2 (the usual
                "learn on fakes" baseline; the paper trains on reals to stay in domain)
  'embedded'    with a training variant: sized for the embedded 64 px model on 2 CPU cores in
                one sitting (ENCODER_CARD.md), instead of the paper's 14,000 kimg on 8 GPUs
  'quick'       seconds-scale smoke run of any variant

Without VGG16 weights the conv4_3 term falls back to the generator's discriminator features
(said once in the log), weighted `loss.fallback_weight` (5e-5 is the scale of VGG activations
in [0, 255], not of D's unit-normalised features). Inversion fields: configs/image2stylegan.py.
"""

import ml_collections

from configs import image2stylegan

# Paper / official code (genforce/idinvert: train_encoder.py, loss_encoder.py, and
# idinvert_pytorch's StyleGANInverter).
FEATURE_WEIGHT = 5e-5        # lambda_feat on VGG16 conv4_3
ADV_WEIGHT = 0.08            # lambda_adv (D_scale)
R1_GAMMA = 10.0              # D's gradient penalty on reals
TRAIN_LR = 1e-4              # Adam, E and D
TRAIN_BETAS = (0.9, 0.99)
LR_DECAY_RATE = 0.8          # lr = TRAIN_LR * 0.8 ** (step / decay_steps), continuous
LR_DECAY_FRACTION = 0.25     # decay_steps = a quarter of the run (max_iters // 4)
PAPER_BATCH = 16             # 8 GPUs x 16 at 256 px in the paper: 128
PAPER_KIMG = 14_000          # 256 px
INVERT_LR = 0.01             # in-domain optimisation
INVERT_STEPS = 100
DOMAIN_WEIGHT = 2.0          # lambda_dom
FALLBACK_WEIGHT = 1.0        # D-feature fallback, as Image2StyleGAN's perceptual term

VARIANTS = ('encoder', 'train', 'train_fakes', 'embedded', 'quick')


def _loss(config, channels: str) -> None:
  config.loss.mse = 1.0
  config.loss.perceptual = 'idinvert'  # VGG16 conv4_3 (perceptual.idinvert_feature)
  config.loss.perceptual_weight = FEATURE_WEIGHT
  config.loss.fallback_weight = FALLBACK_WEIGHT  # weight of the D-feature fallback
  config.loss.channels = channels


def _invert_config(parts) -> ml_collections.ConfigDict:
  config = image2stylegan.get_config('wplus,quick' if 'quick' in parts else 'wplus')
  config.method = 'encoder' if 'encoder' in parts else 'idinvert'
  config.init = 'encoder'            # start at E(x)
  config.steps = 0 if 'encoder' in parts else (10 if 'quick' in parts else INVERT_STEPS)
  config.optimizer.lr = INVERT_LR
  _loss(config, 'rgb')
  config.encoder = ml_collections.ConfigDict()
  config.encoder.path = ''           # native encoder folder; '' = the embedded default's
  config.encoder.weight = DOMAIN_WEIGHT  # lambda_dom of ||w - E(G(w))||^2 (0 = off)
  return config


def _train_config(parts) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = 'idinvert_train'
  config.objective = 'fakes' if 'train_fakes' in parts else 'real'  # 'real' | 'fakes'
  config.seed = 0
  config.batch_size = PAPER_BATCH    # global batch, split over the devices
  config.total_kimg = float(PAPER_KIMG)
  config.lr = TRAIN_LR               # E's and D's Adam learning rate
  config.betas = TRAIN_BETAS
  config.lr_decay_rate = LR_DECAY_RATE
  config.lr_decay_fraction = LR_DECAY_FRACTION
  config.adv_weight = ADV_WEIGHT     # lambda_adv (objective 'real')
  config.r1_gamma = R1_GAMMA
  config.r1_interval = 1             # R1 every N D steps, scaled by N (NVlabs' lazy R1); 1 = paper
  config.fakes_truncation = 1.0      # objective 'fakes': psi of the sampled codes

  config.loss = ml_collections.ConfigDict()
  config.loss.mse = 1.0
  config.loss.perceptual = 'idinvert'
  config.loss.perceptual_weight = FEATURE_WEIGHT
  config.loss.fallback = 'discriminator'
  config.loss.fallback_weight = FALLBACK_WEIGHT
  config.loss.discriminator_layers = 'auto'
  config.loss.vgg_weights = ''
  config.loss.lpips_weights = ''
  config.loss.channels = 'all'       # E reconstructs every channel (the mask of RGB + mask Gs)

  config.encoder = ml_collections.ConfigDict()
  config.encoder.channel_base = 8192  # channels(res) = min(base // res, max), as G's
  config.encoder.channel_max = 256
  config.encoder.norm_groups = 8

  config.data = ml_collections.ConfigDict()
  config.data.mirror = True          # random horizontal flips (the paper's mirror augment)
  config.data.defect_fraction = 0.5  # data 'embedded': crops with a painted defect, as G saw

  config.log_every = 50
  config.sample_every = 500
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  config.keep_checkpoint_every = 0

  if 'embedded' in parts:            # one sitting on 2 CPU cores (ENCODER_CARD.md)
    config.batch_size = 16
    config.total_kimg = 40.0
    config.lr = 1e-3                 # 10x the paper's: 3 orders of magnitude fewer images
    config.encoder.channel_base = 2048
    config.encoder.channel_max = 128
    config.r1_interval = 4
  if 'quick' in parts:
    config.batch_size = 4
    config.total_kimg = 0.016        # 4 steps
    config.log_every = config.sample_every = config.checkpoint_every = 2
    config.encoder.channel_base = 1024
    config.encoder.channel_max = 32
  return config


def get_config(arg=None):
  parts = [p for p in (arg or '').split(',') if p]
  unknown = [p for p in parts if p not in VARIANTS]
  if unknown:
    raise ValueError(f'unknown idinvert variant(s) {unknown}; use a comma list of {VARIANTS}')
  if 'train' in parts or 'train_fakes' in parts:
    return _train_config(parts)
  if 'embedded' in parts:
    raise ValueError("'embedded' sizes a training run: use it with 'train' or 'train_fakes'")
  return _invert_config(parts)
