"""inversion.api: folder jobs (skip, checkpoint, resume), outputs and latents files, NaN targets,
bad inputs, and the `python -m inversion invert` command. Fixture generator, few steps."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from generators import checkpoint
from inversion import api, demo, images, jobs, latents, weights
from inversion import engine as eng
from tests.test_engine import ROOT, generated, scaled_fixture_model

STEPS, CHUNK = 12, 3   # 4 chunks per batch


def folder_config():
  return api.as_config('image2stylegan:w', [
      f'--config.steps={STEPS}', f'--config.chunk_size={CHUNK}', '--config.optimizer.lr=0.05',
      '--config.loss.perceptual=none', '--config.metrics.lpips=off'])


@pytest.fixture(scope='module')
def model(official_g_state, official_d_state):
  return scaled_fixture_model(official_g_state, official_d_state)


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory, model):
  d = tmp_path_factory.mktemp('images')
  x, _ = generated(model, 3, seed=21)
  for i, im in enumerate(np.clip(x, -1, 1)):
    images.save_image(str(d / f'img{i}.png'), im)
  (d / 'notes.txt').write_text('not an image: skipped with a log line')
  return d


class Interrupt(Exception):
  pass


@pytest.fixture(scope='module')
def folder_runs(tmp_path_factory, model, image_dir):
  """An uninterrupted folder job, and one killed after chunk 2 of 4 of the first batch and
  rerun (3 images, batches of 2: the second batch is padded)."""
  base = tmp_path_factory.mktemp('runs')
  full = jobs.invert_folder(image_dir, model, folder_config(), base / 'full', batch_size=2,
                           progress=False)
  calls = []

  def kill(info):
    calls.append(info.chunk)
    if len(calls) == 2:
      raise Interrupt()

  with pytest.raises(Interrupt):
    jobs.invert_folder(image_dir, model, folder_config(), base / 'resumed', batch_size=2,
                      progress=False, callback=kill)
  state_file = base / 'resumed' / '_work' / 'state.npz'
  killed = {'checkpoint': state_file.exists(),
            'latents': sorted(os.listdir(base / 'resumed' / 'latents'))
                       if (base / 'resumed' / 'latents').exists() else []}
  later = []
  resumed = jobs.invert_folder(image_dir, model, folder_config(), base / 'resumed', batch_size=2,
                              progress=False, callback=lambda info: later.append(info.chunk))
  again = jobs.invert_folder(image_dir, model, folder_config(), base / 'resumed', batch_size=2,
                            progress=False)
  return dict(base=base, full=full, resumed=resumed, killed=killed, later=later, again=again,
              state_file=state_file)


@pytest.fixture(scope='module')
def killed_while_saving(folder_runs, model, image_dir):
  """A folder job killed after the first image of batch 1 was saved, and rerun."""
  out = folder_runs['base'] / 'saving'
  save = latents.save_latents

  def save_once_then_die(path, *args, **kwargs):
    if (out / 'latents').exists() and os.listdir(out / 'latents'):
      raise Interrupt()
    save(path, *args, **kwargs)

  with pytest.MonkeyPatch.context() as m:
    m.setattr(latents, 'save_latents', save_once_then_die)
    with pytest.raises(Interrupt):
      jobs.invert_folder(image_dir, model, folder_config(), out, batch_size=2, progress=False)
  killed = sorted(os.listdir(out / 'latents'))
  later = []
  resumed = jobs.invert_folder(image_dir, model, folder_config(), out, batch_size=2,
                              progress=False, callback=lambda info: later.append(info.chunk))
  return dict(out=out, killed=killed, later=later, resumed=resumed)


def test_resume_after_kill_equals_uninterrupted(folder_runs, model):
  r = folder_runs
  assert r['killed'] == {'checkpoint': True, 'latents': []}  # killed inside batch 1
  assert r['later'] == [2, 3, 0, 1, 2, 3]  # batch 1 resumed at chunk 2 (nothing redone), batch 2
  assert not r['state_file'].exists()      # removed once its batch was saved
  assert r['resumed'].inverted == ['img0', 'img1', 'img2'] and r['resumed'].skipped == []
  for name in ('img0', 'img1', 'img2'):
    a = latents.load_latents(r['base'] / 'full' / 'latents' / f'{name}.npz', model)
    b = latents.load_latents(r['base'] / 'resumed' / 'latents' / f'{name}.npz', model)
    # exact: the same compiled chunk program in this process, resumed from a bit-exact state file
    np.testing.assert_array_equal(a.latent, b.latent)
    np.testing.assert_array_equal(a.losses['total'], b.losses['total'])
  # a third run finds everything done
  assert r['again'].skipped == ['img0', 'img1', 'img2'] and r['again'].inverted == []


def test_kill_while_saving_a_batch_loses_nothing(killed_while_saving, folder_runs, model):
  r = killed_while_saving
  assert r['killed'] == ['img0.npz']
  assert r['later'] == [0, 1, 2, 3]  # batch 1 came back from its final checkpoint: only batch 2 ran
  assert r['resumed'].skipped == ['img0'] and r['resumed'].inverted == ['img1', 'img2']
  for name in ('img0', 'img1', 'img2'):
    a = latents.load_latents(folder_runs['base'] / 'full' / 'latents' / f'{name}.npz', model)
    b = latents.load_latents(r['out'] / 'latents' / f'{name}.npz', model)
    np.testing.assert_array_equal(a.latent, b.latent)  # exact: a rerun of the same programs
  assert not (r['out'] / '_work' / 'state.npz').exists()


def test_resuming_with_other_settings_is_refused(tmp_path, model, image_dir):
  def kill(info):
    raise Interrupt()

  with pytest.raises(Interrupt):
    jobs.invert_folder(image_dir, model, folder_config(), tmp_path, batch_size=2, progress=False,
                      callback=kill)
  other = folder_config()
  other.optimizer.lr = 0.02
  for config, kwargs in [(other, {}), (folder_config(), {'batch_size': 3}),
                         (folder_config(), {'init': tmp_path})]:
    with pytest.raises(ValueError, match='another generator, config, batch size or --init.*'
                                         'delete .*state.npz'):
      jobs.invert_folder(image_dir, model, config, tmp_path, **{'batch_size': 2, **kwargs},
                        progress=False)


def test_folder_job_starts_from_given_latents(folder_runs, model, image_dir, tmp_path):
  full = folder_runs['base'] / 'full' / 'latents'
  config = folder_config()
  config.optimizer.lr = 0.0  # no step moves the latents: the result is the start
  res = jobs.invert_folder(image_dir, model, config, tmp_path / 'from_init', batch_size=2,
                          progress=False, init=full)
  for name in res.inverted:
    a = latents.load_latents(full / f'{name}.npz', model)
    b = latents.load_latents(tmp_path / 'from_init' / 'latents' / f'{name}.npz', model)
    np.testing.assert_array_equal(a.latent, b.latent)  # exact: each update is 0 * step = 0
  (tmp_path / 'partial').mkdir()
  (tmp_path / 'partial' / 'img0.npz').write_bytes((full / 'img0.npz').read_bytes())
  with pytest.raises(FileNotFoundError, match='img1.npz does not exist: --init needs'):
    jobs.invert_folder(image_dir, model, folder_config(), tmp_path / 'partial_out', batch_size=2,
                      progress=False, init=tmp_path / 'partial')


def test_folder_outputs_and_latents_layout(folder_runs, model):
  out = folder_runs['base'] / 'full'
  for f in ('grid.png', 'metrics.csv', 'metrics.json', 'losses.png'):
    assert (out / f).is_file(), f
  assert sorted(os.listdir(out / 'reconstructions')) == ['img0.png', 'img1.png', 'img2.png']
  with open(out / 'metrics.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == ['img0', 'img1', 'img2']
  assert set(rows[0]) == {'name', 'mse', 'psnr', 'ssim', 'status'}
  assert all(r['status'] == 'ok' for r in rows)
  doc = json.loads((out / 'metrics.json').read_text())
  assert doc['generator_id'] == latents.generator_fingerprint(model)
  assert set(doc['mean_over_ok_images']) == {'mse', 'psnr', 'ssim'}
  with np.load(out / 'latents' / 'img1.npz') as z:
    keys = set(z.files)
  assert {'format', 'version', 'name', 'space', 'latent', 'ws', 'generator_id', 'generator_json',
          'config_json', 'metrics_json', 'status', 'loss/total', 'loss/mse'} == keys
  rec = latents.load_latents(out / 'latents' / 'img1.npz', model)
  gc = model.g_config
  assert rec.space == 'w' and rec.latent.shape == (gc.w_dim,)
  assert rec.ws.shape == (gc.num_ws, gc.w_dim) and np.allclose(rec.ws, rec.latent)
  assert rec.losses['total'].shape == (STEPS,)
  assert float(rows[1]['psnr']) == pytest.approx(rec.metrics['psnr'], rel=1e-5)
  # the grid: 3 rows of target | reconstruction, 2 px padding
  with Image.open(out / 'grid.png') as im:
    assert im.size == (2 * 34 - 2, 3 * 34 - 2)


def test_nan_target_pixel_stops_that_image_only(tmp_path, model):
  x, _ = generated(model, 2, seed=21)
  x = np.clip(x, -1, 1)
  x[1, 5, 7, 0] = np.nan
  res = api.invert(x, model, folder_config(), names=['good', 'bad'], out_dir=tmp_path,
                   progress=False)
  assert res.failed.tolist() == [False, True] and res.failed_step.tolist() == [-1, 0]
  w_avg = np.asarray(model.g_vars['buffers']['mapping']['w_avg'])
  np.testing.assert_array_equal(res.latents[1], w_avg)  # its last finite latent: the start, copied
  assert np.isfinite(res.reconstructions).all() and res.metrics['psnr'][0] > 15
  with open(tmp_path / 'metrics.csv') as f:
    rows = {r['name']: r for r in csv.DictReader(f)}
  assert rows['good']['status'] == 'ok'
  assert rows['bad']['status'].startswith('non-finite loss at step 0')
  rec = latents.load_latents(tmp_path / 'latents' / 'bad.npz', model)
  assert rec.status.startswith('non-finite loss at step 0') and np.isfinite(rec.latent).all()


# ----------------------------------------------------------------------------------------------
# Bad inputs.


def test_bad_image_files_name_the_file(tmp_path, model, image_dir):
  for name, data in (('empty.png', b''), ('corrupt.png', b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)):
    d = tmp_path / name.split('.')[0]
    d.mkdir()
    (d / name).write_bytes(data)
    with pytest.raises(images.ImageError) as e:
      jobs.invert_folder(d, model, folder_config(), tmp_path / 'out', progress=False)
    assert name in str(e.value) and 'Fix or remove' in str(e.value)
  only_text = tmp_path / 'text'
  only_text.mkdir()
  (only_text / 'readme.txt').write_text('hi')
  with pytest.raises(images.ImageError, match='no images in folder'):
    jobs.invert_folder(only_text, model, folder_config(), tmp_path / 'out', progress=False)
  with pytest.raises(ValueError, match=r'\[B, 32, 32, 3\].*load_images'):
    api.invert(np.zeros((1, 64, 64, 3), np.float32), model, folder_config(), progress=False)
  with pytest.raises(ValueError, match='NCHW'):
    api.invert(np.zeros((1, 3, 32, 32), np.float32), model, folder_config(), progress=False)
  with pytest.raises(ValueError, match='0..255'):
    api.invert(np.full((1, 32, 32, 3), 200.0, np.float32), model, folder_config(),
               progress=False)


def test_latents_of_another_generator_are_refused(tmp_path, folder_runs, model,
                                                  official_g_state, image_dir):
  other = scaled_fixture_model(official_g_state, scale=0.5)  # same shapes, other weights
  path = folder_runs['base'] / 'full' / 'latents' / 'img0.npz'
  with pytest.raises(latents.LatentsError) as e:
    latents.load_latents(path, other)
  msg = str(e.value)
  assert str(path) in msg and latents.generator_fingerprint(model) in msg
  assert latents.generator_fingerprint(other) in msg and 'pass that checkpoint' in msg
  # a folder job into an out_dir holding another generator's latents stops before any work
  with pytest.raises(latents.LatentsError, match='img0.npz'):
    jobs.invert_folder(image_dir, other, folder_config(), folder_runs['base'] / 'full',
                      progress=False)
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not a zip file')
  with pytest.raises(latents.LatentsError, match='bad.npz.*not a readable'):
    latents.load_latents(bad)
  np.savez(tmp_path / 'plain.npz', w=np.zeros(3))
  with pytest.raises(latents.LatentsError, match='plain.npz is not a'):
    latents.load_latents(tmp_path / 'plain.npz')
  with pytest.raises(latents.LatentsError, match='does not exist'):
    latents.load_latents(tmp_path / 'missing.npz')


def test_config_and_weights_errors(model):
  g_only = checkpoint.Model(model.g_config, model.g_vars)
  # VGG weights are not on this machine: 'error' raises, 'discriminator' needs a D
  with pytest.raises(weights.WeightsNotFoundError):
    api.Inverter(model, api.as_config('image2stylegan', ['--config.loss.fallback=error']))
  with pytest.raises(weights.WeightsNotFoundError, match='perceptual=none'):
    api.Inverter(g_only, 'image2stylegan')
  inv = api.Inverter(model, 'image2stylegan')  # falls back to D features, with a warning
  assert [n for n, _ in inv.spec.image_terms] == ['mse', 'discriminator']
  assert inv.spec.loss_channels == 3
  with pytest.raises(ValueError, match='perceptual must be one of'):
    api.Inverter(model, api.as_config('image2stylegan', ['--config.loss.perceptual=alex']))
  with pytest.raises(ValueError, match='no field'):
    api.as_config('projector', ['--config.optimizer.learning_rate=1'])
  with pytest.raises(ValueError, match='no field'):
    api.as_config('projector', ['--config.optimizer.lr.value=1'])  # lr is a leaf
  # Types are kept; booleans never pass for numbers or the reverse (ml_collections would cast).
  for bad in ('--config.optimizer.lr=True', '--config.steps=False', '--config.steps=1.5'):
    with pytest.raises(ValueError, match='the field is of type'):
      api.as_config('projector', [bad])
  ok = api.as_config('projector', ['--config.optimizer.lr=1', '--config.label=3'])
  assert ok.optimizer.lr == 1.0 and isinstance(ok.optimizer.lr, float) and ok.label == '3'
  with pytest.raises(ValueError, match='needs latents'):
    inv2 = api.Inverter(model, api.as_config('image2stylegan:w', ['--config.init=given']))
    inv2.initial_latents(jnp.zeros((1, 2), jnp.uint32))


def test_embedded_model_missing_gives_clear_cli_error(tmp_path, monkeypatch, image_dir):
  from inversion import __main__ as cli
  monkeypatch.setattr(checkpoint, 'EMBEDDED_DIR', tmp_path / 'nowhere')
  with pytest.raises(SystemExit, match='embedded model is missing'):
    cli.main(['invert', '--images', str(image_dir), '--out', str(tmp_path / 'o')])


@pytest.mark.parametrize('argv,message', [
    (['invert', '--config.nope=1'], "Config has no field 'nope'"),
    (['invert', '--config.steps=abc'], 'the field is of type int'),
    (['invert', '--init', 'no_such_dir'], '--init no_such_dir: not a folder'),
    (['edit', 'interpolate', '--a', 'missing.npz', '--b', 'missing.npz'],
     'latents file missing.npz does not exist')])
def test_cli_reports_bad_settings_without_a_traceback(tmp_path, monkeypatch, image_dir, model,
                                                      argv, message):
  from inversion import __main__ as cli
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(checkpoint, 'load', lambda path: model)  # no file reading needed here
  if argv[0] == 'invert':
    argv = argv[:1] + ['--images', str(image_dir), '--out', 'o', '--no-progress'] + argv[1:]
  else:
    argv = argv + ['--out', 'o.png']
  with pytest.raises(SystemExit, match=f'^error: .*{message}'):
    cli.main(argv)


def test_cli_invert_smoke(tmp_path, model, image_dir):
  """`python -m inversion invert` on 2 tiny PNGs with a saved fixture checkpoint."""
  ckpt = checkpoint.save(tmp_path / 'ckpt', model)
  out = tmp_path / 'out'
  cmd = [sys.executable, '-m', 'inversion', 'invert', '--checkpoint', str(ckpt), '--images',
         str(image_dir / 'img0.png'), str(image_dir / 'img1.png'), '--method', 'wplus',
         '--steps', '4', '--out', str(out), '--batch-size', '2', '--no-progress',
         '--config.chunk_size=2', '--config.loss.perceptual=none']
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert '2 inverted, 0 already done, 0 failed' in proc.stdout
  assert 'psnr' in proc.stdout
  for f in ('grid.png', 'metrics.csv', 'metrics.json', 'losses.png', 'latents/img0.npz',
            'latents/img1.npz', 'reconstructions/img1.png'):
    assert (out / f).is_file(), f
  rec = latents.load_latents(out / 'latents' / 'img0.npz', model)
  assert rec.space == 'wplus' and rec.losses['total'].shape == (4,)
  assert json.loads(rec.config_json)['steps'] == 4


def test_demo_writes_grid_table_and_curves(tmp_path, model):
  """`python -m inversion demo`'s library function on the fixture generator (the committed
  64 px example crops are resized to its 32 px), 2 steps per method."""
  out = demo.demo(tmp_path / 'demo', model, steps=2, progress=False,
                 overrides=['--config.chunk_size=2', '--config.loss.perceptual=none',
                            '--config.metrics.lpips=off', '--config.w_avg_samples=500'])
  names = sorted(p.stem for p in demo.EXAMPLES_DIR.glob('*.png'))
  assert len(names) == 6
  for f in ('grid.png', 'metrics.csv', 'metrics.json', 'losses.png'):
    assert (tmp_path / 'demo' / f).is_file(), f
  for space in ('z', 'w', 'wplus'):
    assert sorted(p.stem for p in (tmp_path / 'demo' / space / 'latents').glob('*.npz')) == names
  with Image.open(tmp_path / 'demo' / 'grid.png') as im:  # 6 rows x (target | Z | W | W+)
    assert im.size == (4 * 34 - 2, 6 * 34 - 2)
  assert [r['method'] for r in out['rows']][-3:] == ['Z', 'W', 'W+']
  assert 'psnr' in out['table'] and 'lpips' not in out['table']  # no LPIPS weights here


def test_conditional_generator_inverts_with_a_class(tmp_path):
  """A conditional generator (c_dim > 0): Z space maps z with the named class, W+ needs no
  class, the class's mean w is the 'mean' start, and class errors list the classes."""
  from generators import networks
  g_config = networks.GeneratorConfig(z_dim=8, c_dim=2, w_dim=8, img_resolution=16,
                                      channel_base=64, channel_max=16, mapping_layers=2)
  g_vars = networks.init_generator(g_config, jax.random.PRNGKey(0))
  g_vars['buffers']['mapping']['w_avg'] = jnp.full((8,), 0.5)  # as if tracked over both classes
  cond = checkpoint.Model(g_config, g_vars, metadata={'class_names': ['clean', 'defect']})
  z = jax.random.normal(jax.random.PRNGKey(1), (1, 8))
  target = np.asarray(cond.synthesis(cond.mapping(z, cond.labels('defect', 1))))
  overrides = ['--config.steps=6', '--config.chunk_size=3', '--config.loss.perceptual=none',
               '--config.metrics.lpips=off', '--config.w_avg_samples=500']

  result = api.invert(target, cond, api.as_config(
      'image2stylegan:z', overrides + ['--config.label=defect']), progress=False)
  want_ws = cond.mapping(jnp.asarray(result.latents), cond.labels(1, 1))
  # the engine's compiled mapping vs an eager one: matmul sums may reassociate (0 seen here); the
  # other class moves w by ~0.5
  np.testing.assert_allclose(result.ws, want_ws, rtol=1e-5, atol=1e-6)
  assert result.ws.shape == (1, g_config.num_ws, 8) and np.all(np.isfinite(result.metrics['mse']))

  # The demo's examples are defect-free crops: on a conditional generator it inverts them as
  # 'clean' unless told otherwise.
  example = sorted(demo.EXAMPLES_DIR.glob('*.png'))[0]
  demo_out = demo.demo(tmp_path / 'demo', cond, steps=6, examples=[str(example)], spaces=('z',),
                       overrides=overrides[1:], progress=False)
  assert json.loads(demo_out['results']['z'].config_json)['label'] == 'clean'

  record = latents.load_latents(latents.save_latents(tmp_path / 'a.npz', result, 0, cond), cond)
  with pytest.raises(latents.LatentsError, match='--config.label=defect'):  # its z is a defect's
    api.invert(target, cond, api.as_config('image2stylegan:z', overrides + [
        '--config.label=clean', '--config.init=given']), init=[record], progress=False)
  with pytest.raises(ValueError, match='set config.label'):
    api.Inverter(cond, api.as_config('image2stylegan:z', overrides))
  with pytest.raises(ValueError, match='0=clean, 1=defect'):
    api.Inverter(cond, api.as_config('image2stylegan:w', overrides + ['--config.label=hole']))
  with pytest.raises(ValueError, match='name a class'):
    cond.sample([0, 1])
  with pytest.raises(ValueError, match='unconditional'):
    api.Inverter(checkpoint.Model(dataclasses.replace(g_config, c_dim=0), g_vars),
                 api.as_config('image2stylegan:w', overrides + ['--config.label=1']))

  keys = jnp.zeros((1, 2), jnp.uint32)
  plain = api.Inverter(cond, api.as_config('image2stylegan:wplus', overrides))
  np.testing.assert_allclose(plain.initial_latents(keys).latent[0, 0], 0.5)  # the buffer
  per_class = [api.Inverter(cond, api.as_config('image2stylegan:w', overrides + [
      f'--config.label={name}'])).initial_latents(keys).latent[0] for name in ('clean', 'defect')]
  z_samples = jax.random.normal(jax.random.PRNGKey(eng.W_STATS_SEED), (500, 8))
  for index, start in enumerate(per_class):  # each class starts at its own sample mean of w
    class_mean = cond.mapping(z_samples, cond.labels(index, 500))[:, 0].mean(0)
    # mean of 500 w, chunked vs one batch: sums reordered (1.2e-7 abs seen); the classes: > 1e-4
    np.testing.assert_allclose(start, class_mean, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(per_class[0] - per_class[1]))) > 1e-4
  # Random starts without a class: each image maps its z with a class drawn from its own key,
  # so an image's start does not depend on the batch it is in.
  random_w = api.Inverter(cond, api.as_config('image2stylegan:w', overrides + [
      '--config.init=random']))
  three = jax.random.split(jax.random.PRNGKey(4), 3)
  # batch 3 vs batch 2 through the mapping's matmuls: float32 sums in another order (0 here, 1.8e-6
  # rel on another machine, where rtol 1e-6 failed); another class or z moves w by ~0.5
  np.testing.assert_allclose(random_w.initial_latents(three).latent[1:],
                             random_w.initial_latents(three[1:]).latent, rtol=2e-5, atol=2e-6)
  # ... and one batch mixes classes: each start is mapping(z, c) of one class or the other.
  keys16 = jax.random.split(jax.random.PRNGKey(6), 16)
  starts = random_w.initial_latents(keys16).latent
  z16 = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (8,)))(keys16)
  gaps = np.stack([np.abs(starts - cond.mapping(z16, cond.labels(i, 16))[:, 0]).max(-1)
                   for i in (0, 1)])  # [class, image]
  # in-engine batch vs an eager batch of 16 (0 here; 1.8e-6 rel = 4e-6 abs on |w| <= 2 seen
  # elsewhere, too close to 1e-5); the other class is >= 0.7 away
  assert np.all(gaps.min(0) < 1e-4) and set(gaps.argmin(0).tolist()) == {0, 1}

  # With a conditional D, its features (which do not depend on the class) are the perceptual
  # term: no labels needed there; its logits do need them.
  d_config = networks.DiscriminatorConfig(c_dim=2, img_resolution=16, img_channels=3,
                                          channel_base=64, channel_max=16)
  d_vars = networks.init_discriminator(d_config, jax.random.PRNGKey(2))
  disc = networks.Discriminator(d_config)
  img = jnp.asarray(target)
  with pytest.raises(ValueError, match='pass labels c'):
    disc.apply(d_vars, img)
  unlabelled = disc.apply(d_vars, img, method=networks.Discriminator.features)
  labelled = disc.apply(d_vars, img, cond.labels(0, 1), method=networks.Discriminator.features)
  assert 'logits' not in unlabelled and 'logits' in labelled
  # exact: the same ops on the same image up to b4_fc; the labels enter only after it
  np.testing.assert_array_equal(unlabelled['b4_fc'], labelled['b4_fc'])
  with_d = checkpoint.Model(g_config, g_vars, d_config, d_vars, cond.metadata)
  result = api.invert(target, with_d, api.as_config('image2stylegan:wplus', overrides + [
      '--config.loss.perceptual=discriminator']), progress=False)
  assert np.all(np.isfinite(result.losses['discriminator']))


def test_model_benchmark_inverts_held_out_crops_through_the_demo(tmp_path, model):
  """`benchmarks.embedded_model --invert`: the crops reach the demo unchanged (lossless PNGs),
  and the reported numbers are the means of the demo's per-image W+ metrics, overall and per
  photo."""
  from benchmarks import embedded_model
  crops = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  summary = embedded_model._inversion(model, crops, tmp_path / 'inv', np.array([2, 0]), steps=2)
  read_back, _ = images.load_images(str(tmp_path / 'inv' / 'targets'), 32)
  np.testing.assert_allclose(read_back, crops / 127.5 - 1, atol=1e-6)
  per_image = json.loads((tmp_path / 'inv' / 'metrics.json').read_text())['images']
  assert len(per_image) == 2 and summary['images'] == 2 and summary['steps'] == 2
  for name in ('mse', 'psnr', 'ssim'):
    assert np.isfinite(summary[name])
    np.testing.assert_allclose(summary[name], np.mean([r[name] for r in per_image]), rtol=1e-5)
    for photo, image in (('gravel', 0), ('brick', 1)):  # one crop each: its own numbers
      np.testing.assert_allclose(summary['per_photo'][photo][name], per_image[image][name],
                                 rtol=1e-5)
  assert sorted(summary['per_photo']) == ['brick', 'gravel']


def test_model_benchmark_spread_sees_a_generator_that_ignores_z(model):
  """`benchmarks.embedded_model._spread`, the collapse measure: the noise is fixed, so a G whose
  mapping ignores z (first layer's weights zeroed) draws one image and scores 0, where the
  model itself scores clearly above 0; the real row is the spread of the given images."""
  from benchmarks import embedded_model
  params = model.g_vars['params']
  mapping = {**params['mapping'], 'fc0': {**params['mapping']['fc0'],
                                          'weight': jnp.zeros_like(params['mapping']['fc0']['weight'])}}
  collapsed = dataclasses.replace(model, g_vars={**model.g_vars,
                                                 'params': {**params, 'mapping': mapping}})
  real = np.random.default_rng(0).uniform(-1, 1, (40, 32, 32, 3)).astype(np.float32)
  assert embedded_model._spread(collapsed, None, real)['G_ema'] < 1e-6
  normal = embedded_model._spread(model, None, real)
  assert normal['G_ema'] > 0.01
  np.testing.assert_allclose(normal['real'], np.mean(np.std(real[:32], axis=0)), rtol=1e-6)
