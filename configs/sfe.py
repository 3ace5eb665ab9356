"""StyleFeatureEditor (SFE; Bobkov et al., CVPR 2024): network sizes for the pipeline of
`inversion/sfe.py` (`inversion.encoders.sfe` networks).

    python -m inversion invert --method sfe --encoder sfe_editor_light.pt,e4e_ffhq_encode.pt \
        --checkpoint stylegan2-ffhq-config-f.pt --images DIR --out out/sfe
    python -m inversion invert --method sfe --encoder random --images DIR --out out/sfe  # untrained
    python -m inversion train-sfe --stage inverter --config sfe:small,train_inverter,embedded \
        --data embedded --workdir runs/sfe1                     # resumable; then the editor:
    python -m inversion train-sfe --stage editor --config sfe:small,train_editor,embedded \
        --data embedded --workdir runs/sfe2 --inverter-workdir runs/sfe1
    python -m inversion export-sfe --workdir runs/sfe2 --out generators/embedded/sfe

`get_config(arg)`, arg a comma list of one size preset and training variants:
  'official'  the official networks (AIRI-Institute/StyleFeatureEditor `psp_encoders.py`; the
              defaults of the `inversion.encoders.sfe` configs): inverter = iResNet-50
              trunk on a 256 px input (stages 64/128/256/512 wide, 3/4/14/3 deep, stage 3
              unstrided) + W+ head (3x3-pooled stages -> one linear per code) + content head
              + a 6-block fuser; feature editor = the same 6-block ContentLayerDeepFast;
              e4e = IR-SE-50 with an FPN of GradualStyleBlocks. The feature layer is
              'b64.conv1' of a 1024 px generator (SFE's index 9). Sizes are what the official
              files hold; `load` reads them from the files themselves.
  'small'     the same architecture narrowed for a small generator (the embedded 64 px model):
              input = the generator's resolution (at most 256), stages 16/32/64/128 wide and
              1/2/2/1 deep, 2x2 pooling in the W+ head, 3-block fuser and editor. The feature
              map is a quarter of the input side: 16x16 ('b16.conv1') at 64 px.

  'train_inverter'  SFE's stage 1 (`inversion/encoders/sfe_train.py`), the official
              `fse_inverter_train.yaml`: MSE 1, perceptual 0.8 (LPIPS; without its weights the
              model D's features, said in the log), identity 0.1 (ArcFace IR-SE-50 from a user
              file; off without one), adversarial 0.01 (non-saturating, D from the model's D,
              trained from `d_start_step`, R1 gamma 10 every 16 D steps), feature regulariser
              0.01 MSE(F_k, F_w); both G(w, F_k) and G(w) reconstruct x; F_k blends in with
              s = min(1, slope * step); Ranger (RAdam + Lookahead + gradient centralisation)
              lr 1e-4, batch 8.
  'train_editor'    stage 2, `fse_editor_train.yaml`: the same losses without the feature
              regulariser, the inverter frozen; random edits along the generator's directions.
  'embedded'  with a training variant: sized for the embedded 64 px model on 2 CPU cores
              (SFE_CARD.md) instead of the paper's 500k steps on a GPU.
  'quick'     seconds-scale smoke run of a training variant (tests).

The feature layer follows from the inverter's input size (`inversion.sfe.feature_layer_of`:
the block whose side is input / 4); `feature_layer` overrides it (any
`generators.networks.feature_layers` name whose side matches).
"""

import ml_collections

SMALL_MAX_INPUT = 256                    # small input = the generator's side, at most this
SMALL_STAGES = (16, 32, 64, 128)
SMALL_DEPTHS = (1, 2, 2, 1)
SMALL_POOL = 2
SMALL_BLOCKS = 3
PRESETS = ('official', 'small')
STAGES = {'train_inverter': 'inverter', 'train_editor': 'editor'}
VARIANTS = tuple(STAGES) + ('embedded', 'quick')

# Official training (AIRI-Institute/StyleFeatureEditor configs/fse_*_train.yaml,
# training/optimizers.py, training/losses.py).
MSE_WEIGHT = 1.0
PERCEPTUAL_WEIGHT = 0.8      # LPIPS
ID_WEIGHT = 0.1              # ArcFace IR-SE-50 (pSp's IDLoss)
ADV_WEIGHT = 0.01            # non-saturating, on G(w, F_k) and G(w)
FEATURE_REG_WEIGHT = 0.01    # stage 1: MSE(F_k, F_w)
R1_GAMMA = 10.0
R1_INTERVAL = 16             # R1Loss.hyper_d_reg_every
D_START_STEP = 45_000        # dis_train_start_step
RAMP_SLOPE = 1e-4            # s = min(1, 1e-4 * n_iter) (FSEInverter)
TRAIN_LR = 1e-4              # Ranger
RANGER_BETAS = (0.95, 0.999)
RANGER_EPS = 1e-5
LOOKAHEAD_K = 6              # Ranger's k: fast steps per slow update
LOOKAHEAD_ALPHA = 0.5        # Ranger's alpha: slow step size
PAPER_BATCH = 8
PAPER_STEPS = 500_000        # fse_editor_train.yaml train.steps
EDIT_STRENGTH = 3.0          # |strength| in sigmas of a direction's codes, drawn uniformly
DEFECT_STRENGTH = (-3.0, 6.0)  # the defect direction: real crops need long moves to gain one
GANSPACE_COMPONENTS = 8


def _train_fields(config: ml_collections.ConfigDict, parts) -> None:
  """The training fields of stage `config.stage` (see the module docstring)."""
  config.seed = 0
  config.batch_size = PAPER_BATCH    # global batch, split over the devices
  config.steps = PAPER_STEPS
  config.optimizer = 'ranger'        # 'ranger' (official) | 'adam'
  config.lr = TRAIN_LR               # also D's
  config.betas = RANGER_BETAS        # Adam: (0.9, 0.999) is usual
  config.eps = RANGER_EPS
  config.lookahead_k = LOOKAHEAD_K
  config.lookahead_alpha = LOOKAHEAD_ALPHA
  config.gradient_centralization = True  # Ranger's use_gc
  config.feature_ramp_slope = RAMP_SLOPE  # stage 1: s = min(1, slope * step); stage 2: 1
  config.d_start_step = D_START_STEP # D trains (and the adversarial term counts) from this step
  config.r1_gamma = R1_GAMMA
  config.r1_interval = R1_INTERVAL   # R1 every N D steps, scaled by N (lazy)

  config.loss = ml_collections.ConfigDict()
  config.loss.mse = MSE_WEIGHT
  config.loss.perceptual = 'lpips'
  config.loss.perceptual_weight = PERCEPTUAL_WEIGHT
  config.loss.fallback = 'discriminator'  # without LPIPS weights: the model D's features
  config.loss.fallback_weight = PERCEPTUAL_WEIGHT
  config.loss.discriminator_layers = 'auto'
  config.loss.vgg_weights = ''
  config.loss.lpips_weights = ''
  config.loss.id_weight = ID_WEIGHT  # 0 = off; off (said in the log) without the file
  config.loss.arcface_weights = ''   # model_ir_se50.pth; '' = the usual weights lookup
  config.loss.adv_weight = ADV_WEIGHT  # 0 = no D
  config.loss.feature_reg = FEATURE_REG_WEIGHT if config.stage == 'inverter' else 0.0
  config.loss.channels = 'all'       # pixel term on every channel (the mask of RGB + mask Gs)

  config.data = ml_collections.ConfigDict()
  config.data.mirror = True          # random horizontal flips
  config.data.defect_fraction = 0.5  # data 'embedded': crops with a painted defect, as G saw

  config.editor = ml_collections.ConfigDict()  # stage 2
  config.editor.inverter = ''        # stage-1 workdir or exported SFE folder (--inverter-workdir)
  config.editor.codes = 'auto'       # w_e: 'auto' (e4e, else domain, else inverter) | 'e4e' |
                                     # 'domain' | 'inverter'
  config.editor.e4e = ''             # e4e_ffhq_encode.pt ('' = none)
  config.editor.encoder = ''         # domain-guided encoder folder ('' = the shipped default)
  config.editor.directions = ''      # directions .npz; '' = GANSpace (+ defect for RGB + mask)
  config.editor.ganspace_components = GANSPACE_COMPONENTS
  config.editor.strength = EDIT_STRENGTH
  config.editor.defect_strength = DEFECT_STRENGTH  # (low, high) sigmas, drawn uniformly
  config.editor.defect_share = 0.0   # share of edits along 'defect'; 0 = as any direction
  config.editor.identity_init = False  # start the editor as F_k' = F_k (not official; short runs)

  config.log_every = 50
  config.sample_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  config.keep_checkpoint_every = 0

  if 'embedded' in parts:            # one sitting on 2 CPU cores (SFE_CARD.md)
    inverter = config.stage == 'inverter'
    config.batch_size = 8
    config.steps = 2400 if inverter else 1400  # about 32 + 20 min (SFE_CARD.md)
    config.lr = 1e-3                 # 10x the official: 2 orders of magnitude fewer steps
    config.feature_ramp_slope = 1 / 800  # F_k fully in after a third of stage 1
    config.d_start_step = 1200 if inverter else 400  # D costs more than the rest of a step
    config.r1_interval = 4
    config.editor.identity_init = True
    config.editor.defect_strength = (2.0, 7.0)  # mostly strengths that add a defect (>= 4.5)
    config.editor.defect_share = 0.5  # else 1 edit in 9: too few defects to learn in 1.4k steps
    config.log_every = 25
    config.sample_every = 400
    config.checkpoint_every = 200
  if 'quick' in parts:
    config.batch_size = 4            # D's minibatch-stddev groups of 4
    config.steps = 4
    config.feature_ramp_slope = 0.25
    config.d_start_step = 0          # one compiled step and one D step (tests)
    config.r1_interval = 1
    config.lookahead_k = 2           # a slow (exported) update within the 4 steps
    config.log_every = config.checkpoint_every = 2
    config.sample_every = 4
    config.stage_channels = (8, 8, 16, 16)  # tiny networks: seconds to compile
    config.stage_depths = (1, 1, 1, 1)
    config.fuser_blocks = config.editor_blocks = 2
    config.editor.ganspace_components = 2


def get_config(arg: str = 'small') -> ml_collections.ConfigDict:
  from inversion.encoders import sfe as nets  # pylint: disable=import-outside-toplevel
  parts = [p for p in (arg or 'small').split(',') if p]
  presets = [p for p in parts if p in PRESETS]
  unknown = [p for p in parts if p not in PRESETS + VARIANTS]
  if unknown or len(presets) > 1:
    raise ValueError(f'unknown SFE preset/variant(s) {unknown or presets}; choose one preset '
                     f'of {PRESETS} and variants of {VARIANTS}')
  stages = [STAGES[p] for p in parts if p in STAGES]
  if len(stages) > 1 or (not stages and ('embedded' in parts or 'quick' in parts)):
    raise ValueError(f"'embedded' and 'quick' size a training run: use one of {tuple(STAGES)}")
  preset = presets[0] if presets else 'small'
  official = preset == 'official'
  inverter, editor, e4e = nets.InverterConfig(), nets.EditorConfig(), nets.E4EConfig()
  config = ml_collections.ConfigDict()
  config.method = 'sfe'
  config.preset = preset
  config.seed = 0                        # untrained weights ('random')
  config.feature_layer = ''              # '' = from the inverter's input size
  config.input_size = inverter.input_size if official else 0  # 0: the generator's, <= 256
  config.stage_channels = inverter.stage_channels if official else SMALL_STAGES
  config.stage_depths = inverter.stage_depths if official else SMALL_DEPTHS
  config.pooled_size = inverter.pooled_size if official else SMALL_POOL
  config.fuser_blocks = inverter.fuser_blocks if official else SMALL_BLOCKS
  config.editor_blocks = editor.blocks if official else SMALL_BLOCKS
  config.e4e_stage_channels = e4e.stage_channels if official else SMALL_STAGES
  config.e4e_stage_depths = e4e.stage_depths if official else SMALL_DEPTHS
  config.se_reduction = e4e.se_reduction
  if stages:
    config.method = 'sfe_train'
    config.stage = stages[0]         # 'inverter' | 'editor'
    _train_fields(config, parts)
  return config


def networks_for(config: ml_collections.ConfigDict, g_config):
  """(InverterConfig, EditorConfig, E4EConfig, feature layer) for generator `g_config`."""
  from inversion.encoders import sfe as nets  # pylint: disable=import-outside-toplevel
  size = config.input_size or min(g_config.img_resolution, SMALL_MAX_INPUT)
  side = size // nets.FEATURE_STRIDE
  layer = config.feature_layer or f'b{side}.conv1'
  channels = g_config.channels(int(layer.split('.')[0][1:]))
  inverter = nets.InverterConfig(
      input_size=size, stage_channels=tuple(config.stage_channels),
      stage_depths=tuple(config.stage_depths), pooled_size=config.pooled_size,
      num_ws=g_config.num_ws, w_dim=g_config.w_dim, feature_channels=channels,
      fuser_blocks=config.fuser_blocks)
  editor = nets.EditorConfig(channels=channels, blocks=config.editor_blocks)
  e4e = nets.E4EConfig(input_size=size, stage_channels=tuple(config.e4e_stage_channels),
                       stage_depths=tuple(config.e4e_stage_depths), num_ws=g_config.num_ws,
                       w_dim=g_config.w_dim, se_reduction=config.se_reduction)
  return inverter, editor, e4e, layer
