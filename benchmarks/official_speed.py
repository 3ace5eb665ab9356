"""Ours against the official PyTorch StyleGAN2 (NVlabs stylegan2-ada-pytorch), same work, same
machine, one process.

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch ~/sg2ada   # the official code
    python -m pip install torch                                         # CPU or CUDA build
    python -m benchmarks.official_speed --official-repo ~/sg2ada --out out/bench/official_speed.json

Neither torch nor the official code is a dependency of this toolkit: only this comparison uses
them, from the clone you point it at. Rows, on config-F-shaped networks (z = w = 512, 8 mapping
layers, channel_base 32768, channel_max 512, random weights, float32):

  synthesis fwd+bwd  forward and gradient w.r.t. ws of sum(img^2), noise 'const', at each
                     `--sizes` and `--batch` (an inversion step's network cost). Official:
                     `G.synthesis` in eval mode as projector.py runs it, which modulates with
                     NVlabs' grouped-convolution path (`fused_modconv`). Ours: the engine's
                     schedule (one image at a time inside the compiled step on CPU, the whole
                     batch elsewhere; `EngineSpec.micro_batch`), as `generator_speed` measures.
  projector step     one step of NVlabs projector.py: w (one per image, broadcast) plus the noise
                     maps under Adam, LPIPS-style VGG16 distance of the image area-downsampled to
                     256 px, the noise regulariser (weight 1e5) and noise re-normalisation.
                     Official: that loop, written out here from projector.py's algorithm, one
                     image at a time (projector.py takes one target). Its VGG16 is a stand-in with
                     random weights (13 convs, 5 normalised feature taps, as NVlabs' vgg16.pt;
                     the file cannot be downloaded here), so only the speed is meaningful. Ours:
                     `configs/projector.py` on the engine with random LPIPS weights, batches of
                     `--batch` images.

Each row: median seconds per call (or step) and images (or image-steps) per second; for
synthesis also GFLOP/s from the analytic count (`benchmarks.common`) and the fraction of the
measured conv peak. torch uses `torch.get_num_threads()` threads (printed); JAX its default.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, generator_speed, inversion_speed
from generators import networks
from inversion import api, lpips

COLUMNS = ["work", "resolution", "batch", "code", "seconds", "per_s", "gflops", "peak_fraction",
           "speedup"]
VGG16_CHANNELS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512)
VGG16_TAPS = (1, 3, 6, 9, 12)  # conv indices (0-based) of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
PROJECTOR_VGG_SIZE = 256        # projector.py area-downsamples larger images to this
PROJECTOR_NOISE_REG = 1e5       # regularize_noise_weight
PROJECTOR_LR = 0.1


def _import_official(repo: str):
  """training.networks from the user's clone of NVlabs/stylegan2-ada-pytorch."""
  path = pathlib.Path(repo).expanduser()
  if not (path / "training" / "networks.py").is_file():
    raise SystemExit(f"{path} is not a clone of NVlabs/stylegan2-ada-pytorch (no "
                     "training/networks.py); clone it and pass its folder as --official-repo.")
  try:
    import torch
  except ImportError:
    raise SystemExit("This comparison needs PyTorch: python -m pip install torch") from None
  sys.path.insert(0, str(path))
  from training import networks as official  # pylint: disable=import-outside-toplevel
  return torch, official


def _official_generator(torch, official, resolution: int):
  cfg = common.config_f(resolution)
  torch.manual_seed(0)
  g = official.Generator(
      z_dim=cfg.z_dim, c_dim=0, w_dim=cfg.w_dim, img_resolution=resolution,
      img_channels=cfg.img_channels, mapping_kwargs={"num_layers": cfg.mapping_layers},
      synthesis_kwargs={"channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
                        "num_fp16_res": 0, "conv_clamp": None})
  return g.eval().requires_grad_(False)  # as projector.py uses it


def _stand_in_vgg16(torch):
  """VGG16's 13 convs with random weights, returning NVlabs vgg16.pt-style LPIPS features: the
  5 taps, each unit-normalised over channels and scaled by 1/sqrt(pixels), concatenated."""
  nn = torch.nn
  torch.manual_seed(1)
  layers, channels = [], 3
  for spec in VGG16_CHANNELS:
    if spec == "M":
      layers.append(nn.MaxPool2d(2))
    else:
      layers.append(nn.Conv2d(channels, spec, 3, padding=1))
      channels = spec
  convs = nn.ModuleList(layers).requires_grad_(False)

  def features(x):
    taps, conv_index = [], -1
    for layer in convs:
      x = layer(x)
      if isinstance(layer, nn.Conv2d):
        conv_index += 1
        x = torch.relu(x)
        if conv_index in VGG16_TAPS:
          unit = x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
          taps.append(unit.flatten(1) / np.sqrt(x.shape[2] * x.shape[3]))
    return torch.cat(taps, dim=1)
  return features


def _official_projector_step(torch, g, target: np.ndarray):
  """One image's projector.py step as a closure (its state kept inside), on the VGG stand-in."""
  functional = torch.nn.functional
  vgg = _stand_in_vgg16(torch)

  def to_vgg(images):  # [-1, 1] -> [0, 255], area-downsampled to 256 px like projector.py
    images = (images + 1) * (255 / 2)
    if images.shape[2] > PROJECTOR_VGG_SIZE:
      images = functional.interpolate(images, size=(PROJECTOR_VGG_SIZE,) * 2, mode="area")
    return images

  with torch.no_grad():
    target_features = vgg(to_vgg(torch.from_numpy(target.transpose(0, 3, 1, 2))))
    w_avg = g.mapping(torch.randn(1000, g.z_dim), None)[:, :1].mean(0, keepdim=True)
  w_opt = w_avg.clone().requires_grad_(True)
  noise_bufs = [buf for name, buf in g.synthesis.named_buffers() if "noise_const" in name]
  for buf in noise_bufs:
    buf.normal_()
    buf.requires_grad = True
  optimizer = torch.optim.Adam([w_opt] + noise_bufs, betas=(0.9, 0.999), lr=PROJECTOR_LR)

  def step():  # projector.py's step; its w-noise and learning-rate schedules cost nothing here
    ws = (w_opt + torch.randn_like(w_opt) * 0.01).repeat([1, g.num_ws, 1])
    images = g.synthesis(ws, noise_mode="const")
    dist = (target_features - vgg(to_vgg(images))).square().sum()
    reg = 0.0
    for buf in noise_bufs:
      noise = buf[None, None, :, :]
      while True:
        reg = reg + (noise * torch.roll(noise, 1, dims=3)).mean() ** 2
        reg = reg + (noise * torch.roll(noise, 1, dims=2)).mean() ** 2
        if noise.shape[2] <= 8:
          break
        noise = functional.avg_pool2d(noise, kernel_size=2)
    loss = dist + reg * PROJECTOR_NOISE_REG
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      for buf in noise_bufs:
        buf -= buf.mean()
        buf *= buf.square().mean().rsqrt()
  return step


def synthesis_rows(torch, official, resolution: int, batch: int, peak: float) -> list[dict]:
  """Synthesis forward + backward w.r.t. ws, official and ours."""
  cfg = common.config_f(resolution)
  g = _official_generator(torch, official, resolution)
  ws_torch = g.mapping(torch.randn(batch, cfg.z_dim), None).detach()

  def official_step():
    ws = ws_torch.clone().requires_grad_(True)
    g.synthesis(ws, noise_mode="const").square().sum().backward()
  official_s = common.time_fn(official_step, repeats=3)

  variables = networks.init_generator(cfg, jax.random.PRNGKey(0))
  ws = jnp.asarray(ws_torch.numpy())
  if batch > 1 and jax.default_backend() == "cpu":  # the engine's CPU schedule
    ours = generator_speed.one_by_one_gradient(cfg)
  else:
    ours = jax.jit(functools.partial(generator_speed.ws_gradient, cfg))
  ours_s = common.time_fn(ours, ws, variables, repeats=3)
  flops = common.WS_BACKWARD_FACTOR * common.synthesis_flops(cfg) * batch
  return [_row("synthesis fwd+bwd", resolution, batch, code, seconds, flops, peak, official_s)
          for code, seconds in (("official", official_s), ("ours", ours_s))]


def projector_rows(torch, official, resolution: int, batches: list[int], chunk: int,
                   iters: int) -> list[dict]:
  """Seconds per projector step: the official loop for one image, ours for each batch."""
  g = _official_generator(torch, official, resolution)
  target = np.random.default_rng(0).uniform(-1, 1, (1, resolution, resolution, 3)).astype(
      np.float32)
  official_s = common.time_fn(_official_projector_step(torch, g, target), repeats=3)
  rows = [_row("projector step", resolution, 1, "official", official_s, None, None, official_s)]
  model = inversion_speed.random_model(resolution)
  for batch in batches:
    config = api.as_config("projector", [
        f"--config.steps={chunk * (iters + 1)}", f"--config.chunk_size={chunk}",
        "--config.loss.fallback=error", "--config.metrics.lpips=off",
        "--config.w_avg_samples=1000"])
    inv = api.Inverter(model, config, term_params={"lpips": lpips.random_lpips_params(0)})
    _, seconds, _ = inversion_speed.time_engine(inv, resolution, batch, iters)
    rows.append(_row("projector step", resolution, batch, "ours", seconds, None, None,
                     official_s))
  return rows


def _row(work, resolution, batch, code, seconds, flops, peak, official_s) -> dict:
  """`speedup`: images (or image-steps) per second against the official code's."""
  gflops = flops / seconds / 1e9 if flops else None
  return {"work": work, "resolution": resolution, "batch": batch, "code": code,
          "seconds": seconds, "per_s": batch / seconds, "gflops": gflops,
          "peak_fraction": gflops / peak if gflops and peak else None,
          "speedup": (batch / seconds) / (1 / official_s if work == "projector step"
                                          else batch / official_s)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--official-repo", required=True,
                      help="a clone of https://github.com/NVlabs/stylegan2-ada-pytorch")
  parser.add_argument("--sizes", type=int, nargs="*", default=[64, 256, 1024],
                      help="synthesis rows at these resolutions (none: projector rows only)")
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
  parser.add_argument("--projector-sizes", type=int, nargs="*", default=[256, 1024])
  parser.add_argument("--chunk", type=int, default=5, help="engine steps per timed chunk")
  parser.add_argument("--iters", type=int, default=2, help="timed engine chunks (median)")
  parser.add_argument("--out", default=None, help="JSON output path")
  args = parser.parse_args(argv)
  torch, official = _import_official(args.official_repo)
  print(f"device: {common.device_description()}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, jax {jax.__version__}")
  peak = common.conv_peak()["gflops"]
  print(f"dense conv peak: {peak:.1f} GFLOP/s")
  rows = []
  for resolution in args.sizes:
    for batch in args.batch:
      rows += synthesis_rows(torch, official, resolution, batch, peak)
      common.print_table(rows[-2:], COLUMNS)
  for resolution in args.projector_sizes:
    rows += projector_rows(torch, official, resolution, args.batch, args.chunk, args.iters)
  print()
  common.print_table(rows, COLUMNS)
  common.write_json(args.out, {"device": common.device_description(),
                               "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                               "jax": jax.__version__, "peak_gflops": peak, "rows": rows})


if __name__ == "__main__":
  main()
