"""StyleFeatureEditor (SFE; Bobkov et al., CVPR 2024): network sizes for the pipeline of
`inversion/sfe.py` (`inversion.encoders.sfe` networks).

    python -m inversion invert --method sfe --encoder sfe_editor_light.pt,e4e_ffhq_encode.pt \
        --checkpoint stylegan2-ffhq-config-f.pt --images DIR --out out/sfe
    python -m inversion invert --method sfe --encoder random --images DIR --out out/sfe  # untrained

`get_config(arg)`:
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


def get_config(arg: str = 'small') -> ml_collections.ConfigDict:
  from inversion.encoders import sfe as nets  # pylint: disable=import-outside-toplevel
  preset = arg or 'small'
  if preset not in PRESETS:
    raise ValueError(f'unknown SFE preset {preset!r}; choose from {PRESETS}')
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
                       w_dim=g_config.w_dim, se_reduction=config.se_reduction)
  return inverter, editor, e4e, layer
