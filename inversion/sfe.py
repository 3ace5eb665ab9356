"""StyleFeatureEditor (SFE; Bobkov et al., CVPR 2024): inversion into W+ plus a feature tensor
in one forward pass, and edits that keep the image's detail, on any generator `generators.load`
reads.

The pipeline is the official `FSEFull.forward` / `FSEInferenceRunner` (AIRI-Institute/
StyleFeatureEditor), on our networks (`inversion.encoders.sfe`) and the generator's feature hook
(`generators.networks.synthesis(..., feature_layer=...)`):

    x_e     = resize(x, inverter input size)      bilinear, no antialias (F.interpolate)
    ws      = latent_avg + W+ head(x_e)           the inverter's codes
    F_pred  = content head(x_e)                   the inverter's feature prediction
    F_w     = G's activation at the feature layer from ws (computed up to that layer only)
    F_k     = fuser(cat(F_pred, F_w))             what the latents file keeps beside ws
    F_k'    = editor(cat(F_k, delta))             delta = F(w_e) - F(edit(w_e)); 0 to invert
    image   = G(edit(ws), F_k' injected at the layer)

`w_e` is the editing encoder's code of the image: e4e's (official) where its file is given, else
this toolkit's domain-guided encoder where one exists for the generator (the embedded model
ships one), else the inverter's own ws. Without an editor file (the inverter alone, SFE's phase
one), F_k' = F_k, as the official `FSEInverter` edits.

Files (`load`): the official `sfe_inverter_light.pt` / `sfe_editor_light.pt` (the editor file
holds the inverter too) and e4e's `e4e_ffhq_encode.pt`, in any order, read without torch; or
'random' for untrained weights sized for the generator (`configs/sfe.py` small preset: the
commands run end to end; the results mean nothing until the networks are trained).

Native files (`save_native` / `load_native`; `python -m inversion export-sfe` writes them): a
folder with sfe.json (the generator's fingerprint, the feature layer, the training record),
inverter.npz and, after stage 2, editor.npz (`inversion.encoders.sfe.save`). They are refused for
another generator. The embedded model ships one (generators/embedded/sfe, SFE_CARD.md), the
default when no files are given for that model.

Official FFHQ files expect rosinality's `stylegan2-ffhq-config-f.pt` (`generators.load` reads
it; its `latent_avg` is the generator's w_avg here), feature layer 'b64.conv1' (SFE's index 9).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
import types
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from generators import networks
from inversion import engine as eng
from inversion.encoders import sfe as nets

log = logging.getLogger(__name__)

__all__ = ['EMBEDDED_SFE_DIR', 'FolderInverter', 'RANDOM', 'SFE', 'SFEError', 'default_sfe',
           'edit', 'encode', 'invert', 'load', 'load_native', 'render', 'resolve', 'save_native',
           'untrained']

RANDOM = 'random'  # `load` name of untrained, generator-sized networks
OFFICIAL_FILES = ('sfe_editor_light.pt (inverter + feature editor) or sfe_inverter_light.pt '
                  '(inverter only), and e4e_ffhq_encode.pt (editing codes), from '
                  'https://huggingface.co/AIRI-Institute/StyleFeatureEditor (pretrained_models/)')
FEATURE_SCALE = 1.0  # inference blend: the official min(1, 1e-4 * n_iter) at n_iter = 1e5
BATCH_SIZE = 16      # images per compiled call
NATIVE_FILE = 'sfe.json'
NATIVE_FORMAT = 'stylegan-inversion-jax-sfe-folder'
NATIVE_VERSION = 1
EMBEDDED_SFE_DIR = pathlib.Path(__file__).resolve().parents[1] / 'generators' / 'embedded' / 'sfe'
TRAIN_HINT = ('train SFE for it (`python -m inversion train-sfe --stage inverter|editor`, '
              'inversion/encoders/sfe_train.py)')


class SFEError(ValueError):
  """SFE weights that are missing, incomplete or do not fit the generator."""


@dataclasses.dataclass(eq=False)
class SFE:
  """SFE's networks for one generator: the inverter, and optionally the editor and e4e."""
  inverter_config: nets.InverterConfig
  inverter_vars: Any
  feature_layer: str                         # generator layer of F ('b64.conv1')
  editor_config: Optional[nets.EditorConfig] = None
  editor_vars: Any = None
  e4e_config: Optional[nets.E4EConfig] = None
  e4e_vars: Any = None
  sources: tuple[str, ...] = ()              # files (or 'random') the parts came from
  trained: bool = True

  def check(self, model) -> None:
    """An SFEError unless the networks fit `model`'s generator (codes, feature layer shape)."""
    gc = model.g_config
    ic = self.inverter_config
    try:
      networks.feature_layer_index(gc, self.feature_layer)
    except ValueError as e:
      raise SFEError(f'SFE ({", ".join(self.sources)}): {e}') from None
    side = int(self.feature_layer.split('.')[0][1:])
    want = (gc.num_ws, gc.w_dim, gc.channels(side), side)
    got = (ic.num_ws, ic.w_dim, ic.feature_channels, ic.feature_size)
    if got != want:
      raise SFEError(
          f'SFE ({", ".join(self.sources)}) predicts {got[0]} x {got[1]} codes and '
          f'{got[2]}-channel {got[3]}x{got[3]} features, but this {gc.img_resolution} px '
          f'generator takes {want[0]} x {want[1]} codes and has {want[2]} channels at '
          f'{self.feature_layer} ({want[3]}x{want[3]}). Official SFE files fit rosinality\'s '
          'FFHQ config-F (stylegan2-ffhq-config-f.pt); for another generator train SFE for it, '
          f'or pass --encoder {RANDOM} for untrained networks of the right size.')


def feature_layer_of(inverter_config: nets.InverterConfig) -> str:
  """The generator layer whose activation F replaces: the last conv of the block as large as
  the inverter's feature map (SFE: 256 px input -> 64x64 -> 'b64.conv1', index 9)."""
  return f'b{inverter_config.feature_size}.conv1'


def _latent_avg(model) -> jax.Array:
  """The generator's mean code (rosinality files' `latent_avg`), which the W+ head adds to."""
  return jnp.asarray(model.g_vars['buffers']['mapping']['w_avg'], jnp.float32)


def untrained(model, config=None, key: Optional[jax.Array] = None) -> SFE:
  """Random-weight inverter and editor sized for `model` by `config` (configs/sfe.py; default
  its small preset). No e4e: the editing codes come from the domain-guided encoder where the
  generator has one, else from the inverter (`encode`)."""
  from configs import sfe as sfe_config  # pylint: disable=import-outside-toplevel
  cfg = sfe_config.get_config('small') if config is None else config
  key = jax.random.PRNGKey(cfg.seed) if key is None else key
  k_inv, k_edit = jax.random.split(key)
  inv_cfg, edit_cfg, _, layer = sfe_config.networks_for(cfg, model.g_config)
  log.warning('SFE: untrained networks (random weights, seed %d) sized for this %d px '
              'generator: the pipeline runs, its images mean nothing until SFE is trained.',
              cfg.seed, model.resolution)
  return SFE(inv_cfg, nets.init_inverter(inv_cfg, k_inv), layer, edit_cfg,
             nets.init_editor(edit_cfg, k_edit), sources=(RANDOM,), trained=False)


def save_native(out: str | os.PathLike, sfe: SFE, model, meta: Optional[dict] = None
                ) -> pathlib.Path:
  """Writes `sfe` (trained for `model`) as a native folder: sfe.json, inverter.npz[,
  editor.npz]; an existing native folder at `out` is replaced."""
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  sfe.check(model)
  out = pathlib.Path(out)
  if out.exists() and any(out.iterdir()) and not (out / NATIVE_FILE).is_file():
    raise FileExistsError(f'{out} exists and is not an SFE folder; pass a new --out')
  out.mkdir(parents=True, exist_ok=True)
  nets.save(out / 'inverter.npz', sfe.inverter_config, sfe.inverter_vars)
  if sfe.editor_config is not None:
    nets.save(out / 'editor.npz', sfe.editor_config, sfe.editor_vars)
  elif (out / 'editor.npz').exists():
    (out / 'editor.npz').unlink()
  info = {'format': NATIVE_FORMAT, 'version': NATIVE_VERSION,
          'generator_id': latents_lib.generator_fingerprint(model),
          'generator_source': model.metadata.get('source', ''),
          'feature_layer': sfe.feature_layer, 'meta': meta or {}}
  (out / NATIVE_FILE).write_text(json.dumps(info, indent=2))
  return out


def load_native(path: str | os.PathLike, model, what: str = 'these SFE networks') -> SFE:
  """The SFE of a native folder (`save_native`); an SFEError for another generator's."""
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(path)
  if not (path / NATIVE_FILE).is_file():
    raise FileNotFoundError(f'{path} is not a native SFE folder (no {NATIVE_FILE}); '
                            '`python -m inversion export-sfe` writes one.')
  info = json.loads((path / NATIVE_FILE).read_text())
  if info.get('format') != NATIVE_FORMAT or info.get('version', 0) > NATIVE_VERSION:
    raise SFEError(f'{path}: format {info.get("format")!r} version {info.get("version")} is '
                   'not one this version reads.')
  generator_id = latents_lib.generator_fingerprint(model)
  if info['generator_id'] != generator_id:
    source = info.get('generator_source') or 'no source recorded'
    raise SFEError(f'{what} ({path}) were trained for generator {info["generator_id"]} '
                   f'({source}), but the checkpoint given is {generator_id} '
                   f'({model.metadata.get("source") or "no source recorded"}); SFE only '
                   f'inverts into the generator it was trained with: pass that checkpoint, or '
                   f'{TRAIN_HINT}.')
  inv_cfg, inv_vars = nets.load(path / 'inverter.npz')
  edit_cfg, edit_vars = (nets.load(path / 'editor.npz') if (path / 'editor.npz').is_file()
                         else (None, None))
  sfe = SFE(inv_cfg, inv_vars, info['feature_layer'], edit_cfg, edit_vars,
            sources=(str(path),))
  sfe.check(model)
  return sfe


def default_sfe(model) -> SFE:
  """The embedded model's shipped SFE (generators/embedded/sfe); an SFEError for any other
  generator, or where the folder is missing."""
  need = (f'SFE needs its networks: pass encoder= / --encoder with the files ({OFFICIAL_FILES}), '
          f'a native SFE folder, or {RANDOM!r} for untrained networks')
  if not (EMBEDDED_SFE_DIR / NATIVE_FILE).is_file():
    raise SFEError(f'{need} (the embedded model\'s SFE, {EMBEDDED_SFE_DIR}, is missing: '
                   '`git checkout -- generators/embedded/sfe` restores it in a clone).')
  try:
    return load_native(EMBEDDED_SFE_DIR, model, 'the shipped SFE')
  except SFEError:
    raise SFEError(f'{need} (the shipped SFE belongs to the embedded model, not to this '
                   'generator).') from None


def load(paths: str | os.PathLike | Sequence[str | os.PathLike], model, config=None) -> SFE:
  """SFE from official files (any order, torch-free), a native folder (`save_native`) or
  'random'; checked against `model`.

  Raises:
    FileNotFoundError: a file is missing (the message lists the official files and where).
    SFEError: no inverter among the files, or networks that do not fit the generator.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [p for p in os.fspath(paths).split(',') if p]
  paths = [os.fspath(p) for p in paths]
  if len(paths) == 1 and os.path.isdir(paths[0]):
    return load_native(paths[0], model)
  if paths == [RANDOM]:
    sfe = untrained(model, config)
    sfe.check(model)
    return sfe
  parts: dict[str, Any] = {}
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f'SFE file {path} does not exist. The official files are '
                              f'{OFFICIAL_FILES}; pass them with --encoder A.pt,B.pt (or '
                              f'--encoder {RANDOM} for untrained networks).')
    weights = nets.load_official(path)
    log.info('SFE: %s is %s', path, weights.kind)
    for part in ('inverter', 'editor', 'e4e'):
      if getattr(weights, f'{part}_vars') is not None:
        parts[part] = (weights, path)
  if 'inverter' not in parts:
    raise SFEError(f'no SFE inverter among {", ".join(paths)}: give {OFFICIAL_FILES}.')
  inv, inv_path = parts['inverter']
  editor, e4e = parts.get('editor', (None, None))[0], parts.get('e4e', (None, None))[0]
  layer = feature_layer_of(inv.inverter_config)
  sfe = SFE(inv.inverter_config, inv.inverter_vars, layer,
            None if editor is None else editor.editor_config,
            None if editor is None else editor.editor_vars,
            None if e4e is None else e4e.e4e_config, None if e4e is None else e4e.e4e_vars,
            tuple(paths))
  sfe.check(model)
  if editor is None:
    log.info('SFE: no feature editor among %s: edits inject F_k unchanged (phase-one SFE).',
             ', '.join(paths))
  return sfe


# ----------------------------------------------------------------------------------------------
# The compiled pipeline.


def _rgb(images: jax.Array) -> jax.Array:
  """The inverter's input: RGB channels (a mask channel of an RGB + mask generator dropped)."""
  return images[..., :3]


@functools.lru_cache(maxsize=8)
def _encode_fn(inv_cfg, e4e_cfg, g_config, layer: str):
  """Jitted (g_vars, inv_vars, e4e_vars, latent_avg, images) -> ws, F_k, w_e. Both codes add
  the generator's latent_avg (the official runner adds it to e4e's too)."""

  def fn(g_vars, inv_vars, e4e_vars, latent_avg, images):
    x = nets.resize_bilinear(_rgb(images), inv_cfg.input_size)
    offset, f_pred = nets.inverter_apply(inv_cfg, inv_vars, x)
    ws = latent_avg + offset
    f_w = networks.synthesis_features(g_config, g_vars, ws, layer)
    f_k = nets.fuse(inv_cfg, inv_vars, f_pred, f_w)
    w_e = None
    if e4e_cfg is not None:
      x = nets.resize_bilinear(_rgb(images), e4e_cfg.input_size)
      w_e = latent_avg + nets.e4e_apply(e4e_cfg, e4e_vars, x)
    return ws, f_k, w_e

  return jax.jit(fn)


@functools.lru_cache(maxsize=8)
def _render_fn(editor_cfg, g_config, layer: str):
  """Jitted (g_vars, editor_vars, ws, F_k, w_e, w_e_edited) -> image: G(ws, editor(F_k, delta))
  with delta = F(w_e) - F(w_e_edited); w_e None = inversion (delta 0)."""

  def fn(g_vars, editor_vars, ws, f_k, w_e, w_e_edited):
    f = f_k
    if editor_cfg is not None:
      delta = jnp.zeros_like(f_k)
      if w_e is not None:
        delta = (networks.synthesis_features(g_config, g_vars, w_e, layer)
                 - networks.synthesis_features(g_config, g_vars, w_e_edited, layer))
      f = nets.editor_apply(editor_cfg, editor_vars, f_k, delta)
    return networks.synthesis(g_config, g_vars, ws, feature_layer=layer, features=f,
                              feature_scale=FEATURE_SCALE)

  return jax.jit(fn)


def _batches(n: int, batch_size: int):
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _put(x, devices):
  """Batch-first array split over the devices (as the engine does), or as is on one device."""
  mesh = eng.batch_mesh(x.shape[0], devices)
  if mesh.size == 1:
    return jnp.asarray(x)
  spec = jax.sharding.PartitionSpec('batch')
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))


@dataclasses.dataclass
class Encoded:
  """What `encode` returns for B images (numpy, batch first)."""
  ws: np.ndarray                   # [B, num_ws, w_dim] the inverter's codes
  features: np.ndarray             # [B, h, w, C] F_k (NHWC)
  encoder_ws: np.ndarray           # [B, num_ws, w_dim] w_e, the editing codes
  encoder_source: str              # 'e4e' | 'domain-encoder' | 'inverter'


def encode(sfe: SFE, model, images, *, batch_size: int = BATCH_SIZE,
           devices: Optional[Sequence[Any]] = None, domain_encoder=None) -> Encoded:
  """One forward pass of the inverter (and of the editing encoder) over images [B, H, W, C]
  in [-1, 1]: codes, F_k and the editing codes w_e (see the module docstring)."""
  images = np.asarray(images, np.float32)
  fn = _encode_fn(sfe.inverter_config, sfe.e4e_config, model.g_config, sfe.feature_layer)
  latent_avg = _latent_avg(model)
  outs = [fn(model.g_vars, sfe.inverter_vars, sfe.e4e_vars, latent_avg, _put(images[s], devices))
          for s in _batches(len(images), batch_size)]
  ws = np.concatenate([np.asarray(o[0]) for o in outs])
  features = np.concatenate([np.asarray(o[1]) for o in outs])
  if sfe.e4e_config is not None:
    return Encoded(ws, features, np.concatenate([np.asarray(o[2]) for o in outs]), 'e4e')
  if domain_encoder is not None:
    return Encoded(ws, features, np.asarray(domain_encoder(images), np.float32),
                   'domain-encoder')
  return Encoded(ws, features, ws, 'inverter')


def render(sfe: SFE, model, ws, features, encoder_ws=None, edited_encoder_ws=None, *,
           batch_size: int = BATCH_SIZE, devices: Optional[Sequence[Any]] = None) -> np.ndarray:
  """G(ws, editor(F_k, delta)) [B, H, W, C]: the reconstruction (no encoder codes: delta 0)
  or an edit (delta = F(encoder_ws) - F(edited_encoder_ws))."""
  ws, features = np.asarray(ws, np.float32), np.asarray(features, np.float32)
  if (encoder_ws is None) != (edited_encoder_ws is None):
    raise ValueError('an edit needs both encoder_ws and edited_encoder_ws')
  fn = _render_fn(sfe.editor_config, model.g_config, sfe.feature_layer)
  out = []
  for s in _batches(len(ws), batch_size):
    pair = ((None, None) if encoder_ws is None else
            (_put(np.asarray(encoder_ws[s], np.float32), devices),
             _put(np.asarray(edited_encoder_ws[s], np.float32), devices)))
    out.append(np.asarray(fn(model.g_vars, sfe.editor_vars, _put(ws[s], devices),
                             _put(features[s], devices), *pair)))
  return np.concatenate(out)


def edit(sfe: SFE, model, ws, features, encoder_ws, edit_fn, **kwargs) -> np.ndarray:
  """SFE edit: `edit_fn` (codes [B, num_ws, w_dim] -> edited codes, e.g. a direction) moves
  both the inverter's ws and the editing codes; the editor turns the feature difference the
  edit makes on the editing codes into F_k'. Returns the edited images [B, H, W, C]."""
  return render(sfe, model, edit_fn(np.asarray(ws)), features, encoder_ws,
                edit_fn(np.asarray(encoder_ws)), **kwargs)


# ----------------------------------------------------------------------------------------------
# Inversion on the API.


def resolve(encoder, model, config=None) -> SFE:
  """An `SFE` from what `invert` was given: an SFE, its file(s) or native folder, 'random'
  (sized by `config`, configs/sfe.py; default its small preset), or nothing (the embedded
  model's shipped SFE, `default_sfe`)."""
  if isinstance(encoder, SFE):
    encoder.check(model)
    return encoder
  if encoder is None or encoder == '':
    return default_sfe(model)
  return load(encoder, model, config)


def _domain_encoder(model):
  """The toolkit's domain-guided encoder for this generator (w_e without e4e), or None."""
  from inversion import encoders  # pylint: disable=import-outside-toplevel
  try:
    return encoders.default_encoder(model)
  except (encoders.EncoderError, FileNotFoundError):
    return None


class FolderInverter:
  """SFE as `jobs.invert_folder` runs it: what the folder job reads from an `api.Inverter`
  (generator_id, config, spec's space / steps / loss channels) and one call per batch."""

  def __init__(self, model, encoder, config=None):
    from configs import sfe as sfe_config  # pylint: disable=import-outside-toplevel
    from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
    self.model = model
    self.config = sfe_config.get_config() if config is None else config
    self.sfe = resolve(encoder, model, self.config)
    self.generator_id = latents_lib.generator_fingerprint(model)
    self.spec = types.SimpleNamespace(space='wplus', num_steps=0,
                                      loss_channels=min(3, model.channels))

  def invert(self, targets: np.ndarray, names: Sequence[str], devices=None):
    return invert(targets, self.model, self.sfe, names=names, devices=devices,
                  config=self.config)


def invert(images, model, encoder, *, names: Optional[Sequence[str]] = None, out_dir=None,
           devices: Optional[Sequence[Any]] = None, batch_size: int = BATCH_SIZE,
           config=None):
  """SFE inversion of images [B, H, W, C] (or one [H, W, C]) in [-1, 1]: one compiled forward
  pass per batch, no optimisation. Returns an `api.InversionResult` (space 'wplus', 0 steps)
  whose `features` are F_k; with `out_dir`, writes the usual outputs (latents files carry F_k,
  the editing codes and the feature layer)."""
  from inversion import api, report  # pylint: disable=import-outside-toplevel
  from inversion import latents as latents_lib  # pylint: disable=import-outside-toplevel
  if out_dir is not None:
    report.prepare_out_dir(out_dir)
  sfe = resolve(encoder, model, config)
  targets = api.check_images(images, model)
  b = len(targets)
  names = list(names) if names is not None else [f'image_{i:03d}' for i in range(b)]
  if len(names) != b:
    raise ValueError(f'{len(names)} names for {b} images')
  domain = None if sfe.e4e_config is not None else _domain_encoder(model)
  enc = encode(sfe, model, targets, batch_size=batch_size, devices=devices,
               domain_encoder=domain)
  if enc.encoder_source != 'e4e':
    log.info('SFE: no e4e file given: editing codes w_e from the %s.',
             'domain-guided encoder' if domain is not None else "inverter's own W+ head")
  recon = render(sfe, model, enc.ws, enc.features, batch_size=batch_size, devices=devices)
  channels = min(3, model.channels)
  lpips_params = api.lpips_metric_params('auto', channels)
  config = {'method': 'sfe', 'sources': list(sfe.sources), 'trained': sfe.trained,
            'feature_layer': sfe.feature_layer, 'inverter': dataclasses.asdict(
                sfe.inverter_config)}
  result = api.InversionResult(
      names=names, space='wplus', latents=enc.ws, ws=enc.ws, noise={},
      reconstructions=recon, targets=targets, losses={},
      metrics=api.image_metrics(recon, targets, channels, lpips_params),
      failed=np.zeros(b, bool), failed_step=np.full(b, -1), steps=0,
      generator_id=latents_lib.generator_fingerprint(model),
      config_json=json.dumps(config), loss_channels=channels,
      features=enc.features, feature_layer=sfe.feature_layer, encoder_ws=enc.encoder_ws,
      encoder_source=enc.encoder_source)
  if out_dir is not None:
    report.save_result(result, out_dir, model)
  return result
