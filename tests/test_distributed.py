"""Jobs across processes (generators/distributed.py): two processes on localhost, each with 2
forced CPU devices and JAX's runtime (`jax.distributed`, local coordinator), run a folder
inversion (one of them killed mid-job, then rerun alone) and encoder training; the results are
those of one process."""

import json
import logging
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import load_config
from generators import checkpoint, distributed, trainer
from inversion import images, jobs, latents
from inversion.encoders import train as enc_train
from tests.test_compare import tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_IMAGES = 6
PROCESS_TIMEOUT_S = 300
INVERT = ['--method', 'wplus', '--steps', '8', '--batch-size', '2', '--no-progress',
          '--config.chunk_size=2', '--config.checkpoint_every=1', '--config.loss.perceptual=none']
TRAIN = ['--config.loss.perceptual=discriminator', '--config.lr=1e-3',
         '--config.total_kimg=0.008', '--config.checkpoint_every=1',
         '--config.log_every=1']                                      # 2 steps of batch 4


@pytest.fixture(scope='module')
def job(tmp_path_factory):
  """A tiny random G (with D) saved as a checkpoint, and a folder of images it drew."""
  base = tmp_path_factory.mktemp('distributed')
  model = tiny_model()
  ckpt = checkpoint.save(base / 'g', model)
  z = jax.random.normal(jax.random.PRNGKey(2), (NUM_IMAGES, model.g_config.z_dim))
  (base / 'images').mkdir()
  for i, im in enumerate(np.clip(np.asarray(model.synthesis(model.mapping(z))), -1, 1)):
    images.save_image(str(base / 'images' / f'im{i}.png'), im)
  return {'base': base, 'model': checkpoint.load(ckpt), 'ckpt': str(ckpt),
          'images': str(base / 'images')}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(args: list[str], process_id: int, port: int, log: pathlib.Path,
           die_after_saves: int = 0) -> subprocess.Popen:
  """Process `process_id` of 2 (2 CPU devices each) running `python -m inversion args`."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', STYLEGAN_INV_NO_CACHE='1',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  die = ['--die-after-saves', str(die_after_saves)] if die_after_saves else []
  cmd = [sys.executable, '-m', 'tests.multiprocess_worker', *die, *args,
         '--coordinator', f'localhost:{port}', '--num-processes', '2',
         '--process-id', str(process_id)]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open('w'), stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen, log: pathlib.Path) -> int:
  try:
    return proc.wait(timeout=PROCESS_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f'process did not finish in {PROCESS_TIMEOUT_S} s:\n{log.read_text()[-3000:]}')


def test_a_process_has_its_share_and_its_files():
  shares = [distributed.Process(i, 3).share(range(8)) for i in range(3)]
  assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]
  assert distributed.Process().share([4, 9]) == [4, 9] and distributed.Process().suffix == ''
  assert distributed.Process(1, 3).suffix == '.p1of3'
  with pytest.raises(ValueError, match='--process-id 2 with --num-processes 2'):
    distributed.Process(2, 2)
  with pytest.raises(ValueError, match='go together'):
    distributed.initialize(num_processes=2, runtime_needed=False)
  try:  # ids alone, for a folder job: that process, without JAX's runtime
    assert distributed.initialize(None, 2, 1, runtime_needed=False) == distributed.Process(1, 2)
  finally:
    distributed.initialize()
  assert distributed.current() == distributed.Process()


def test_place_batch_and_place_rows_give_each_device_its_rows():
  rows = len(jax.devices()) * 2
  _, _, split = trainer.data_mesh(rows)
  x = np.arange(rows * 3, dtype=np.float32).reshape(-1, 3)
  placed = trainer.place_batch((x, None), split)
  np.testing.assert_array_equal(np.asarray(placed[0]), x)
  assert placed[0].sharding == split and placed[1] is None
  asked = []

  def make(indices):  # what a process decodes: only the rows asked for
    asked.extend(indices.tolist())
    return x[indices]
  made = trainer.place_rows(make, x.shape, split)
  np.testing.assert_array_equal(np.asarray(made), x)
  assert made.sharding == split and sorted(asked) == list(range(rows))  # each row made once


def test_folder_job_across_two_processes_with_one_killed_equals_one_process(job, tmp_path,
                                                                            caplog):
  model = job['model']
  config = load_config('image2stylegan:wplus', ['--config.steps=8', '--config.chunk_size=2',
                                                 '--config.checkpoint_every=1',
                                                 '--config.loss.perceptual=none'])
  one = jobs.invert_folder(job['images'], model, config, tmp_path / 'one', batch_size=2,
                           progress=False)
  assert one.merged and len(one.inverted) == NUM_IMAGES

  out, port = tmp_path / 'two', free_port()
  args = ['invert', '--checkpoint', job['ckpt'], '--images', job['images'], '--out', str(out),
          *INVERT]
  logs = [tmp_path / 'p0.log', tmp_path / 'p1.log']
  # Process 1 dies right after its 2nd chunk checkpoint (the first batch, chunk index 1).
  procs = [launch(args, 0, port, logs[0]), launch(args, 1, port, logs[1], die_after_saves=2)]
  assert wait(procs[1], logs[1]) == -9, logs[1].read_text()[-3000:]
  saved = jobs._load_checkpoint(out / '_work' / 'state.p1of2.npz')  # pylint: disable=protected-access
  assert saved[0]['next_chunk'] == 2
  # Process 0 finishes its share, then waits for process 1 until JAX's runtime stops it (after
  # its heartbeat timeout); the test does not wait for that.
  mine = [f'im{i}' for i in range(0, NUM_IMAGES, 2)]
  deadline = time.time() + PROCESS_TIMEOUT_S
  while not all((out / 'latents' / f'{n}.npz').exists() for n in mine):
    assert procs[0].poll() is None, logs[0].read_text()[-3000:]
    assert time.time() < deadline, logs[0].read_text()[-3000:]
    time.sleep(0.5)
  procs[0].kill()
  procs[0].wait()
  assert not (out / 'metrics.csv').exists()  # no merge while process 1's share is unfinished

  # Rerun process 1 alone (no coordinator): it resumes its batch from chunk 2, then merges.
  with caplog.at_level(logging.INFO, logger='inversion.jobs'):
    alone = jobs.invert_folder(job['images'], model, config, out, batch_size=2, progress=False,
                               process=distributed.Process(1, 2))
  assert f"at chunk {saved[0]['next_chunk']}" in caplog.text
  assert sorted(alone.inverted) == ['im1', 'im3', 'im5'] and alone.merged
  assert not alone.failed and len(alone.rows) == NUM_IMAGES
  for name in one.names:  # the union of the shares = the one-process job, image for image
    a = latents.load_latents(tmp_path / 'one' / 'latents' / f'{name}.npz', model)
    b = latents.load_latents(out / 'latents' / f'{name}.npz', model)
    np.testing.assert_allclose(b.ws, a.ws, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(b.losses['total'], a.losses['total'], rtol=1e-4, err_msg=name)
  metrics = (out / 'metrics.csv').read_bytes()
  assert (out / 'grid.png').exists() and metrics.count(b'\n') == NUM_IMAGES + 1
  again = jobs.invert_folder(job['images'], model, config, out, batch_size=2, progress=False,
                             process=distributed.Process(0, 2))
  assert again.inverted == [] and again.merged  # rerunning the merge: the same table
  assert (out / 'metrics.csv').read_bytes() == metrics


def test_encoder_training_across_two_processes_equals_one_process(job, tmp_path):
  model = job['model']
  workdir, port = tmp_path / 'two', free_port()
  args = ['train-encoder', '--config', 'idinvert:train,quick', '--checkpoint', job['ckpt'],
          '--data', job['images'], '--workdir', str(workdir), '--no-progress', *TRAIN]
  logs = [tmp_path / 'p0.log', tmp_path / 'p1.log']
  procs = [launch(args, i, port, logs[i]) for i in range(2)]
  for proc, log in zip(procs, logs):
    assert wait(proc, log) == 0, log.read_text()[-3000:]

  config = load_config('idinvert:train,quick', TRAIN)
  one = enc_train.train_encoder(config, model, job['images'], tmp_path / 'one', progress=False)
  manager = trainer.checkpoint_manager(workdir, config)
  assert manager.all_steps() == [1, 2]  # one checkpoint per step, written jointly
  two = trainer.restore(manager, jax.device_get(enc_train.init_state(config, model)))
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records] == [1, 2]  # written once, by process 0
  assert (workdir / 'samples' / 'step000002.png').exists()
  # A run begun on two processes resumes on one (here from step 1), to the same state.
  shutil.copytree(workdir, tmp_path / 'resumed')
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '2')
  resumed = enc_train.train_encoder(config, model, job['images'], tmp_path / 'resumed',
                                    progress=False)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
