"""SFE inversion speed: ours against the official PyTorch StyleFeatureEditor, same work, same
weights, same machine, one process.

    git clone https://github.com/AIRI-Institute/StyleFeatureEditor ~/sfe      # the official code
    python -m pip install torch                                             # CPU or CUDA build
    python -m benchmarks.sfe_speed --official-repo ~/sfe --out out/bench/sfe_speed.json

Neither torch nor the official code is a dependency of this toolkit: only this comparison uses
them (`benchmarks/sfe_official.py` imports the clone without compiling its CUDA ops).

Work: the official inverter's forward pass (`models/methods.py` FSEInverter.forward, inference):
resize the 1024 px images to 256 (bilinear), the iResNet-50 backbone (W+ and F_pred), the
generator up to its 64x64 block (early stop), the fuser, and the 1024 px synthesis with F_k
injected at index 9. Official networks at the official sizes (Inverter(n_styles=18),
rosinality Generator(1024, 512, 8)) with random weights; ours reads the very same weights
through the same loaders a user's files go through (`inversion.encoders.sfe.load_official`,
`generators.load` of a rosinality file), so both compute the same images (their max
difference is printed as a check). Rows: median seconds per call at each batch, images per
second, and our speed-up per image. torch uses `torch.get_num_threads()` threads (printed),
no grad, eval mode; ours `inversion.sfe.encode` + `render` (two compiled calls, as `invert`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks import common

COLUMNS = ['work', 'batch', 'code', 'seconds', 'per_s', 'speedup', 'max_abs_diff']
G_SIZE = 1024
W_DIM = 512
MAPPING_LAYERS = 8
FEATURE_INDEX = 9      # SFE's w_feats[9]: 'b64.conv1'
EARLY_STOP = 64
SEED = 0
RESIDUAL_GAIN = 0.5    # random weights' scale, so 24 residual blocks stay finite (`_tame`)


def _official(repo: str):
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import sfe_official  # pylint: disable=import-outside-toplevel
  off = sfe_official.import_official(repo)
  gen = torch.Generator().manual_seed(SEED)
  inverter = _tame(torch, sfe_official.randomize(sfe_official.official_inverter(off), gen), gen)
  decoder = sfe_official.randomize(off.stylegan2.Generator(G_SIZE, W_DIM, MAPPING_LAYERS), gen)
  latent_avg = torch.randn(W_DIM, generator=gen) * 0.3
  return torch, inverter, decoder, latent_avg


def _tame(torch, module, gen):
  """Re-draws conv and linear weights at std RESIDUAL_GAIN / sqrt(fan_in): iResNet's own init
  (normal, std 0.1) through 24 residual blocks overflows float32 at 256 px, and then the
  two codes' images cannot be compared. Timing does not depend on the values."""
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * RESIDUAL_GAIN / fan_in ** 0.5)
  return module


def _official_forward(torch, inverter, decoder, latent_avg):
  """FSEInverter.forward (inference: feature scale 1, stored noise)."""
  functional = torch.nn.functional

  @torch.no_grad()
  def forward(x):
    x = functional.interpolate(x, size=(256, 256), mode='bilinear', align_corners=False)
    w, f_pred = inverter.fs_backbone(x)
    w = w + latent_avg
    _, feats = decoder([w], input_is_latent=True, return_features=True, randomize_noise=False,
                       early_stop=EARLY_STOP)
    f_k = inverter.fuser(torch.cat([f_pred, feats[FEATURE_INDEX]], dim=1))
    new = [None] * FEATURE_INDEX + [f_k] + [None] * (17 - FEATURE_INDEX)
    img, _ = decoder([w], input_is_latent=True, return_features=True, new_features=new,
                     feature_scale=1.0, randomize_noise=False)
    return img

  return forward


def _ours(torch, inverter, decoder, latent_avg, tmp: str):
  """Our model and SFE from the official modules' weights, through the user-file loaders."""
  from generators import checkpoint  # pylint: disable=import-outside-toplevel
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  g_path, inv_path = os.path.join(tmp, 'g.pt'), os.path.join(tmp, 'inverter.pt')
  torch.save({'g_ema': decoder.state_dict(), 'latent_avg': latent_avg}, g_path)
  torch.save({'state_dict': {f'encoder.{k}': v for k, v in inverter.state_dict().items()}},
             inv_path)
  model = checkpoint.load(g_path)
  return model, sfe.load(inv_path, model)


def _time(fn, x, repeats: int) -> float:
  fn(x)  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn(x)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--official-repo', required=True,
                      help='a clone of https://github.com/AIRI-Institute/StyleFeatureEditor')
  parser.add_argument('--batch', type=int, nargs='+', default=[1, 8])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--out', default=None, help='JSON output path')
  args = parser.parse_args(argv)
  from inversion import sfe  # pylint: disable=import-outside-toplevel
  torch, inverter, decoder, latent_avg = _official(args.official_repo)
  print(f'device: {common.device_description()}; torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads, jax {jax.__version__}')
  official = _official_forward(torch, inverter, decoder, latent_avg)
  with tempfile.TemporaryDirectory() as tmp:
    model, nets = _ours(torch, inverter, decoder, latent_avg, tmp)

  def ours(x):
    enc = sfe.encode(nets, model, x, batch_size=len(x))
    return sfe.render(nets, model, enc.ws, enc.features, batch_size=len(x))

  rows = []
  rng = np.random.default_rng(SEED)
  for batch in args.batch:
    x = rng.uniform(-1, 1, (batch, G_SIZE, G_SIZE, 3)).astype(np.float32)
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    diff = float(np.abs(ours(x) - official(x_torch).numpy().transpose(0, 2, 3, 1)).max())
    official_s = _time(official, x_torch, args.repeats)
    ours_s = _time(ours, x, args.repeats)
    for code, seconds in (('official', official_s), ('ours', ours_s)):
      rows.append({'work': 'SFE inverter forward', 'batch': batch, 'code': code,
                   'seconds': seconds, 'per_s': batch / seconds,
                   'speedup': official_s / seconds, 'max_abs_diff': diff})
    common.print_table(rows[-2:], COLUMNS)
  print()
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {'device': common.device_description(),
                               'torch': torch.__version__,
                               'torch_threads': torch.get_num_threads(),
                               'jax': jax.__version__, 'rows': rows})


if __name__ == '__main__':
  main()
