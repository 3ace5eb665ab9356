"""The embedded default model: a 64 px StyleGAN2 (RGB + defect mask) trained on texture crops.

    python -m generators train --config embedded --workdir runs/embedded
    python -m generators train --config embedded:quick --workdir /tmp/quick   # smoke run

Sized for a 2-core CPU and a ~3 h budget (see generators/embedded/MODEL_CARD.md).
"""

import ml_collections

RESOLUTION = 64
IMG_CHANNELS = 4  # RGB + defect-mask channel (-1 = no defect, +1 = defect)

def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_from = ""  # a native model path: start G, G_ema, D from it (fresh optimisers)

  # Data: crops of the skimage texture photos, half of them with procedural defects.
  config.data = ml_collections.ConfigDict()
  config.data.resolution = RESOLUTION
  # 0: fresh crops with freshly painted defects every step (generators/train.py); N: a bank of
  # N crops drawn once (flips/rotations in the bank), as the model shipped before trained with
  # 20_000: SWD 61.8 at 96 kimg and 43.2 at its best (163 kimg), where streaming reached 42.4
  # at 96 kimg and 41.1 at 112 kimg (both with R1 gamma 0.5 throughout).
  config.data.num_crops = 0
  config.data.defect_fraction = 0.5
  # Rotations of the crops (generators/data.py QUARTER_TURNS), each also left-right flipped at
  # random: "quarter" (all 8 flips/rotations), "half" (brick courses stay vertical, as in the
  # photo), "none". "half" scored 43.9 at 112 kimg against its own held-out crops (real vs real
  # 20.2; "quarter": 41.1 against 17.6; both with R1 gamma 0.5 throughout), with larger defect
  # masks; see generators/embedded/TRAINING_NOTES.md.
  config.data.rotations = "quarter"
  # Real data instead (generators/mvtec.py): an MVTec AD folder and category, e.g.
  # --config.data.mvtec_root=/data/mvtec_ad --config.data.mvtec_category=carpet; its train
  # split gives good images, its test split the defective ones with their masks. Whole images
  # are area-resized to the resolution; num_crops and defect_fraction do not apply.
  config.data.mvtec_root = ""
  config.data.mvtec_category = ""
  config.data.mvtec_splits = "train,test"
  config.data.mvtec_dihedral = "auto"  # 8 flips/rotations: auto (texture categories) | yes | no
  # Conditional G and D on a one-hot "clean" / "defect" label read off each crop's mask.
  config.data.defect_labels = False
  # Or on a one-hot of each crop's photo (brick, grass, gravel; streamed crops only): unconditional
  # runs drew one photo in up to 3/4 of their samples (benchmarks/photo_coverage.py). Tried at
  # 112 kimg: SWD 54.6 with the classes faded in over 32-64 kimg, collapse without
  # (generators/embedded/TRAINING_NOTES.md).
  config.data.photo_labels = False
  # Transitional conditioning (generators/train.py): the classes' weight ramps 0 -> 1 between
  # these kimg; end 0 = none (full conditioning from the start, which collapsed the "defect"
  # class onto a few images for a while in a 256 kimg run).
  config.transition_start_kimg = 0.0
  config.transition_end_kimg = 0.0

  # Networks.
  config.model = ml_collections.ConfigDict()
  config.model.z_dim = 128
  config.model.w_dim = 128
  config.model.mapping_layers = 2  # NVlabs 'auto' config for small data
  config.model.channel_base = 2048  # 64 px: 32 channels; <= 32 px: channel_max
  config.model.channel_max = 64  # 5.3 s/step at batch 32 on 2 cores when chosen (128: 9.4 s);
                                 # 1.3 s since the hand-written conv VJPs (generators/upfirdn.py),
                                 # where 128 (4-16 px layers) costs only ~1.1x: see
                                 # generators/embedded/TRAINING_NOTES.md
  config.model.conv_clamp = 256.0
  config.model.mbstd_group_size = 4

  # Optimisation (StyleGAN2-ADA 'auto': Adam(0, 0.99), lazy R1 every 16 D steps).
  config.batch_size = 32
  # 3500 steps, where the shipped model stops (later snapshots scored worse,
  # generators/embedded/TRAINING_NOTES.md): about 1 h
  # on 2 CPU cores at ~1.1 s/step; 256 kimg (8000 steps) would take about 3 h.
  config.total_kimg = 112.0
  config.g_lr = 0.0025
  config.d_lr = 0.0025
  config.r1_gamma = 0.5  # 0.05 let D win outright by 2 kimg (grey reals vs colour fakes);
                        # 0.1 (current code): D ahead throughout (d_loss ~0.1), samples one
                        # blurred blob at 29 kimg, stopped there
                        # 2.0 from scratch: slower (SWD 61.1 at 96 kimg)
  # From r1_gamma_late_kimg on, R1's weight is r1_gamma_late (0 = off): 2.0 from 80 kimg kept
  # D's logits closer to G's than 0.5 all along, and at 112 kimg redrew held-out crops better
  # with more defects than the model shipped before, which kept 0.5 throughout
  # (generators/embedded/TRAINING_NOTES.md).
  config.r1_gamma_late = 2.0
  config.r1_gamma_late_kimg = 80.0
  config.r1_interval = 16
  config.style_mixing_prob = 0.9
  config.ema_kimg = 10.0  # half-life of the G EMA, thousands of images
  config.ema_rampup = 0.05  # EMA half-life <= this fraction of images seen (None = off)
  config.lr_rampdown = 0.0  # cosine ramp of both learning rates to 0 over this end fraction
  # ADA (generators/augment.py): D sees reals and fakes augmented with an adaptive probability.
  # Off: a 64 kimg trial with 0.6 scored SWD 104.6 against 78.0 without, and drew no defects.
  config.ada_target = 0.0  # r_t (mean sign of D's real logits) that p steers to; 0 = no ADA
  config.ada_kimg = 100.0  # p changes by at most 1 in this many kimg (NVlabs: 500 for long runs)
  # Which augmentations (generators/augment.py). Our crops already come in all 8 flips/rotations
  # and every shift, so only the colour ones give D anything new; with all five, a fine-tune of
  # the 0.5 model (generators/embedded/TRAINING_NOTES.md) at p -> 0.5 drew every brick course
  # horizontal.
  config.ada_ops = "xflip,rotate90,xint,brightness,contrast"

  # Bookkeeping.
  config.log_every = 20  # steps
  config.sample_every = 100  # steps; sample grid PNG
  config.checkpoint_every = 100  # steps; orbax checkpoint (resumable)
  config.keep_checkpoints = 2
  config.keep_checkpoint_every = 500  # steps; also keep these snapshots (0 = none)

  if arg == "quick":  # seconds-scale smoke run for tests
    config.data.resolution = 16  # 3 blocks instead of 5: compile time dominates tests
    config.data.num_crops = 256
    config.model.z_dim = config.model.w_dim = 16
    config.model.channel_base = 256
    config.model.channel_max = 16
    config.batch_size = 4
    config.total_kimg = 0.016  # 4 steps
    config.log_every = config.sample_every = config.checkpoint_every = 2

  return config
