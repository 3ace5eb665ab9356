"""StyleFeatureEditor (SFE; Bobkov et al., CVPR 2024): network sizes for the pipeline of
`inversion/sfe.py` (`inversion.encoders.sfe` networks).

    python -m inversion invert --method sfe --encoder sfe_editor_light.pt,e4e_ffhq_encode.pt \
        --checkpoint stylegan2-ffhq-config-f.pt --images DIR --out out/sfe
    python -m inversion invert --method sfe --encoder random --images DIR --out out/sfe  # untrained

`get_config(arg)`:
  'official'  the official networks (AIRI-Institute/StyleFeatureEditor `psp_encoders.py`):
              inverter = iResNet-50 trunk on a 256 px input (stages 64/128/256/512 wide,
              3/4/14/3 deep, stage 3 unstrided) + W+ head (3x3-pooled stages -> one linear per
              code) + content head + a 6-block fuser; feature editor = the same 6-block
              ContentLayerDeepFast; e4e = IR-SE-50 with an FPN of GradualStyleBlocks. The
              feature layer is 'b64.conv1' of a 1024 px generator (SFE's index 9). Sizes are
              what the official files hold; `load` reads them from the files themselves.
  'small'     the same architecture narrowed for a small generator (the embedded 64 px model):
              input = the generator's resolution (at most 256), stages 16/32/64/128 wide and
              1/2/2/1 deep, 2x2 pooling in the W+ head, 3-block fuser and editor. The feature
              map is a quarter of the input side: 16x16 ('b16.conv1') at 64 px.

The feature layer follows from the inverter's input size (`inversion.sfe.feature_layer_of`:
the block whose side is input / 4); `feature_layer` overrides it (any
`generators.networks.feature_layers` name whose side matches).
"""

import ml_collections

# Official sizes (psp_encoders.Inverter / FSLikeBackbone / ContentLayerDeepFast /
# Encoder4Editing(50, 'ir_se')).
OFFICIAL_INPUT = 256
OFFICIAL_STAGES = (64, 128, 256, 512)
OFFICIAL_DEPTHS = (3, 4, 14, 3)          # iResNet-50 and IR-SE-50 alike
OFFICIAL_POOL = 3                        # AdaptiveAvgPool2d((3, 3)) in the W+ head
OFFICIAL_BLOCKS = 6                      # ContentLayerDeepFast(6, 1024, 512)
SMALL_MAX_INPUT = 256
SMALL_STAGES = (16, 32, 64, 128)
SMALL_DEPTHS = (1, 2, 2, 1)
SMALL_POOL = 2
SMALL_BLOCKS = 3
SE_REDUCTION = 16                        # IR-SE SEModule(depth, 16)
PRESETS = ('official', 'small')


def get_config(arg: str = 'small') -> ml_collections.ConfigDict:
  preset = arg or 'small'
  if preset not in PRESETS:
    raise ValueError(f'unknown SFE preset {preset!r}; choose from {PRESETS}')
  config = ml_collections.ConfigDict()
  config.method = 'sfe'
  config.preset = preset
  config.seed = 0                        # untrained weights ('random')
  config.feature_layer = ''              # '' = from the inverter's input size
  official = preset == 'official'
  config.input_size = OFFICIAL_INPUT if official else 0  # 0 = the generator's, at most 256
  config.stage_channels = OFFICIAL_STAGES if official else SMALL_STAGES
  config.stage_depths = OFFICIAL_DEPTHS if official else SMALL_DEPTHS
  config.pooled_size = OFFICIAL_POOL if official else SMALL_POOL
  config.fuser_blocks = OFFICIAL_BLOCKS if official else SMALL_BLOCKS
  config.editor_blocks = OFFICIAL_BLOCKS if official else SMALL_BLOCKS
  config.e4e_stage_channels = OFFICIAL_STAGES if official else SMALL_STAGES
  config.e4e_stage_depths = OFFICIAL_DEPTHS if official else SMALL_DEPTHS
  return config


def networks_for(config: ml_collections.ConfigDict, g_config):
  """(InverterConfig, EditorConfig, E4EConfig, feature layer) for generator `g_config`."""
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  from inversion.encoders import sfe as nets  # pylint: disable=import-outside-toplevel
  size = config.input_size or min(g_config.img_resolution, SMALL_MAX_INPUT)
  side = size // sfe.FEATURE_STRIDE
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
                       w_dim=g_config.w_dim, se_reduction=SE_REDUCTION)
  return inverter, editor, e4e, layer
