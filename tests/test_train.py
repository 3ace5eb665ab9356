"""Training: a smoke run of the real loop, exact resume, and data-parallel = single device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import configs
from generators import __main__ as generators_cli
from generators import checkpoint, data, defects, mvtec, networks, train
from tests.test_data import mvtec_root  # pylint: disable=unused-import  (a fixture)


@pytest.fixture(scope="module")
def quick_config():
  return configs.load_config("embedded:quick", ["--config.ada_target=0.6"])  # ADA on: tested


def _leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]


def test_train_resume_is_exact_and_exports(tmp_path, quick_config):
  straight = train.train(quick_config, tmp_path / "straight")
  # Same run cut after 2 steps (a kill), then resumed from the step-2 checkpoint.
  first_half = quick_config.copy_and_resolve_references()
  first_half.total_kimg = 2 * quick_config.batch_size / 1000
  other = first_half.copy_and_resolve_references()
  other.r1_gamma *= 2  # changes what a step computes
  with pytest.raises(ValueError, match="different config"):
    train.train(other, tmp_path / "straight")
  ramped = first_half.copy_and_resolve_references()
  ramped.lr_rampdown = 0.5  # its schedule follows total_kimg, which may then not change
  chattier = ramped.copy_and_resolve_references()
  chattier.log_every = 1  # bookkeeping may still change
  assert train._resumes(json.loads(ramped.to_json()), chattier)
  longer_ramped = quick_config.copy_and_resolve_references()
  longer_ramped.lr_rampdown = 0.5
  assert not train._resumes(json.loads(ramped.to_json()), longer_ramped)
  train.train(first_half, tmp_path / "resumed")
  # Written before two config fields existed: it resumes as if they were off. And resumed
  # with a later end (total_kimg), which extends the run.
  saved = json.loads(first_half.to_json())
  del saved["lr_rampdown"], saved["data"]["defect_labels"], saved["data"]["mvtec_root"]
  (tmp_path / "resumed" / "config.json").write_text(json.dumps(saved))
  # A record logged after the last checkpoint, and a line cut short by the kill: dropped.
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "g_loss": 1.0}\n{"step": 4, "g_lo')
  resumed = train.train(quick_config, tmp_path / "resumed")
  assert int(resumed.step) == int(straight.step) == 4
  for a, b in zip(_leaves(straight), _leaves(resumed)):
    # the resumed run may compile its steps anew: float32 fusion order may differ (0 seen in
    # one process); a lost or repeated step would differ by a whole learning-rate step (> 1e-3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  records = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in records] == [2, 4]

  lines = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [2, 4]
  assert all(np.isfinite(l["g_loss"]) and np.isfinite(l["d_loss"]) for l in lines)
  # ADA is on in this config: p starts at 0 and moves by batch / (ada_kimg * 1000) per step.
  ada_step = quick_config.batch_size / (quick_config.ada_kimg * 1000)
  assert all(0 <= l["augment_p"] <= l["step"] * ada_step + 1e-9 for l in lines)
  assert lines[-1]["augment_p"] == pytest.approx(float(straight.augment_p))
  assert (tmp_path / "straight" / "samples" / "step000004.png").exists()

  model = checkpoint.load(train.export(tmp_path / "straight", tmp_path / "model"))
  assert model.g_config.img_channels == 4 and model.d_config is not None
  jax.tree_util.tree_map(np.testing.assert_array_equal, model.g_vars, straight.ema)  # a copy
  assert model.metadata["training_steps"] == 4
  earlier = checkpoint.load(train.export(tmp_path / "straight", tmp_path / "step2", step=2))
  assert earlier.metadata["training_steps"] == 2
  with pytest.raises(ValueError, match="keeps checkpoints at steps"):
    train.export(tmp_path / "straight", tmp_path / "step3", step=3)
  # Snapshot averaging: G_ema is the mean of the steps' G_ema, D and the step the latest's.
  averaged = checkpoint.load(train.export(tmp_path / "straight", tmp_path / "avg", step=[4, 2]))
  jax.tree_util.tree_map(lambda m, a, b: np.testing.assert_allclose(m, (a + b) / 2, atol=1e-7),
                         averaged.g_vars, model.g_vars, earlier.g_vars)
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(model.g_vars),
                                                       _leaves(earlier.g_vars)))
  jax.tree_util.tree_map(np.testing.assert_array_equal, averaged.d_vars, model.d_vars)
  assert averaged.metadata["training_steps"] == 4 and averaged.metadata["averaged_steps"] == [2, 4]
  with pytest.raises(ValueError, match="not 3"):
    train.export(tmp_path / "straight", tmp_path / "avg3", step=[2, 3, 4])

  # Fine-tuning from the exported model: G, G_ema and D start as its G_ema and D.
  g_config, d_config = train.model_configs(quick_config, 16, 4)
  start = train.init_state_from(quick_config, g_config, d_config, tmp_path / "model")
  jax.tree_util.tree_map(np.testing.assert_array_equal, start.ema, model.g_vars)
  jax.tree_util.tree_map(np.testing.assert_array_equal, start.g_params, model.g_vars["params"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, start.d_params, model.d_vars["params"])
  assert int(start.step) == 0
  wider = train.model_configs(configs.load_config("embedded:quick", ["--config.model.channel_max=8"]),
                              16, 4)
  with pytest.raises(ValueError, match="does not match the config"):
    train.init_state_from(quick_config, *wider, tmp_path / "model")
  tuned_config = quick_config.copy_and_resolve_references()  # same compiled steps: no compile
  tuned_config.init_from, tuned_config.total_kimg = str(tmp_path / "model"), 0.008
  tuned_config.lr_rampdown = 1.0
  tuned = train.train(tuned_config, tmp_path / "tuned")
  assert int(tuned.step) == 2
  last = json.loads((tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["lr_scale"] == pytest.approx(0.5)  # step 1 of 2: halfway down the cosine
  tuned_model = checkpoint.load(train.export(tmp_path / "tuned", tmp_path / "tuned_model"))
  assert tuned_model.metadata["init_from"]["training_steps"] == 4
  assert tuned_model.metadata["total_kimg_trained"] == pytest.approx(0.016 + 0.008)


def test_training_on_a_real_mvtec_category(tmp_path, quick_config, mvtec_root):
  """`--config.data.mvtec_root/mvtec_category`: the category's images (train: good; test: good
  and defects with masks) in their 8 flips/rotations (a texture category) feed the same loop."""
  config = quick_config.copy_and_resolve_references()
  config.data.mvtec_root, config.data.mvtec_category = mvtec_root, "carpet"
  config.total_kimg = 2 * config.batch_size / 1000
  bank = train.training_set(config, config.data.resolution)
  assert bank.shape == (8 * 5, 16, 16, 4) and bank.dtype == np.uint8  # 3 train + 2 test images
  assert (bank[..., 3] > 0).any(axis=(1, 2)).sum() == 8  # the hole, 8 ways
  state = train.train(config, tmp_path / "mvtec")
  assert int(state.step) == 2
  config.data.mvtec_dihedral = "no"
  assert len(train.training_set(config, 16)) == 5
  config.data.mvtec_category = ""
  with pytest.raises(ValueError, match="needs --config.data.mvtec_category"):
    train.training_set(config, 16)
  with pytest.raises(FileNotFoundError, match="grid has no test/ folder.*mvtec_splits=train"):
    mvtec.training_images(mvtec_root, "grid", 16)


def test_conditional_training_on_defect_labels(tmp_path):
  """data.defect_labels: labels read off the mask channel; G and D conditional end to end."""
  images = np.zeros((3, 4, 4, 4), np.uint8)
  images[1, 2, 3, 3] = 255  # one defect pixel
  images[2, ..., :3] = 255  # white but clean
  np.testing.assert_array_equal(train.defect_labels(images), [[1, 0], [0, 1], [1, 0]])
  crops = defects.defect_dataset(64, size=16, seed=0)  # every painted defect leaves a mask
  np.testing.assert_array_equal(train.defect_labels(crops.images)[:, 1], crops.kinds >= 0)

  config = configs.load_config("embedded:quick", ["--config.data.defect_labels=True",
                                                  "--config.total_kimg=0.008",
                                                  "--config.data.num_crops=0"])  # streamed
  state = train.train(config, tmp_path / "run")
  assert int(state.step) == 2
  model = checkpoint.load(train.export(tmp_path / "run", tmp_path / "model"))
  assert model.g_config.c_dim == model.d_config.c_dim == 2
  assert model.metadata["class_names"] == ["clean", "defect"]
  # The labels reach both networks: same z, different class -> different image and logit.
  z = jax.random.normal(jax.random.PRNGKey(0), (2, model.g_config.z_dim))
  z = z.at[1].set(z[0])
  c = np.eye(2, dtype=np.float32)
  img = model.synthesis(model.mapping(z, c=c))
  assert float(np.abs(img[0] - img[1]).max()) > 1e-4
  disc = networks.Discriminator(model.d_config)
  logits = disc.apply(model.d_vars, np.repeat(img[:1], 2, 0), c)
  assert abs(float(logits[0, 0] - logits[1, 0])) > 1e-6
  assert generators_cli.main(["sample", "--checkpoint", str(tmp_path / "model"), "--class",
                              "defect", "--seeds", "0-1", "--out", str(tmp_path / "s.png")]) == 0
  assert (tmp_path / "s.png").exists()
  with pytest.raises(SystemExit):  # no class for a conditional model: a usage error
    generators_cli.main(["sample", "--checkpoint", str(tmp_path / "model"), "--seeds", "0",
                         "--out", str(tmp_path / "t.png")])


def test_conditional_training_on_photo_labels(tmp_path):
  """data.photo_labels: each streamed crop's label is its photo, fakes get the same number of
  each; G and D conditional end to end, sampled by photo name."""
  crops = defects.defect_dataset(64, size=16, seed=0)  # records each crop's photo
  np.testing.assert_array_equal(crops.photos,
                                data.sample_coords(64, 16, np.random.default_rng(0)).source)
  config = configs.load_config("embedded:quick", ["--config.data.photo_labels=True",
                                                  "--config.total_kimg=0.008",
                                                  "--config.data.num_crops=0",
                                                  "--config.batch_size=8"])
  rng = np.random.default_rng([config.seed, 3])
  real, real_c, g_c, d_c = train.real_batch(config, None, None, True, 16, rng)
  again = defects.defect_dataset(8, size=16, seed=np.random.default_rng([config.seed, 3]))
  np.testing.assert_array_equal(real, again.images)
  np.testing.assert_array_equal(real_c, train.photo_labels(again.photos))
  np.testing.assert_array_equal(g_c.sum(0), real_c.sum(0))
  np.testing.assert_array_equal(d_c.sum(0), real_c.sum(0))

  train.train(config, tmp_path / "run")
  model = checkpoint.load(train.export(tmp_path / "run", tmp_path / "model"))
  assert model.g_config.c_dim == model.d_config.c_dim == len(data.SOURCES)
  assert model.metadata["class_names"] == list(data.SOURCES)
  assert generators_cli.main(["sample", "--checkpoint", str(tmp_path / "model"), "--class",
                              "gravel", "--seeds", "0-1", "--out", str(tmp_path / "s.png")]) == 0
  with pytest.raises(ValueError, match="choose one"):  # one kind of label per run
    train.model_configs(configs.load_config("embedded:quick", [
        "--config.data.photo_labels=True", "--config.data.defect_labels=True"]), 16, 4)
  with pytest.raises(ValueError, match="photo_labels needs fresh skimage crops"):
    train.train(configs.load_config("embedded:quick", ["--config.data.photo_labels=True"]),
                tmp_path / "bank")  # the quick config draws a bank of crops
  assert not (tmp_path / "bank").exists()  # refused before writing anything


def test_streamed_crops_are_fresh_every_step_and_a_function_of_the_step():
  """data.num_crops = 0: each step cuts new crops and paints new defects, reproducibly (exact
  resume), with the configured defect share; fakes' labels hold as many defects as the reals."""
  config = configs.load_config("embedded:quick", ["--config.data.num_crops=0",
                                                  "--config.batch_size=16"])
  assert train.streams_crops(config) and not train.streams_crops(configs.load_config("embedded:quick"))
  step = lambda s, conditional=True: train.real_batch(config, None, None, conditional, 16,
                                                      np.random.default_rng([config.seed, s]))
  real, real_c, g_c, d_c = step(7)
  again = step(7)
  np.testing.assert_array_equal(real, again[0])
  np.testing.assert_array_equal(g_c, again[2])
  assert real.shape == (16, 16, 16, 4) and real.dtype == np.uint8
  np.testing.assert_array_equal(real_c, train.defect_labels(real))
  assert real_c[:, 1].sum() == g_c[:, 1].sum() == d_c[:, 1].sum() == 8  # defect_fraction 0.5
  other = step(8, conditional=False)
  assert other[1:] == (None, None, None)
  assert not any((o == r).all() for o in other[0] for r in real)  # no crop of step 7 again
  bank = train.training_set(configs.load_config("embedded:quick"), 16)  # the fixed bank instead
  rows = train.real_batch(config, bank, None, False, 16, np.random.default_rng(0))[0]
  assert all(any((row == b).all() for b in bank) for row in rows)


def test_transitional_conditioning_starts_from_an_unconditional_model(tmp_path, caplog):
  """An unconditional model widened to the conditional networks computes exactly what it did at
  transition 0; the classes then fade in on schedule; export drops D's unconditional head."""
  plain = configs.load_config("embedded:quick")
  g_plain, d_plain = train.model_configs(plain, 16, 4)
  start = train.init_state(plain, g_plain, d_plain)
  base = checkpoint.Model(g_plain, start.ema, d_plain, {"params": start.d_params})
  checkpoint.save(tmp_path / "base", base)
  config = configs.load_config("embedded:quick", [
      "--config.data.defect_labels=True", f"--config.init_from={tmp_path / 'base'}",
      "--config.transition_start_kimg=0.004", "--config.transition_end_kimg=0.012"])
  assert [train.transition(config, step) for step in range(5)] == [0, 0, 0.5, 1, 1]
  assert train.transition(configs.load_config("embedded:quick"), 0) == 1.0

  g_config, d_config = train.model_configs(config, 16, 4)
  widened = train.init_state_from(config, g_config, d_config, base)
  z = jax.random.normal(jax.random.PRNGKey(1), (2, g_config.z_dim))
  classes = np.eye(2, dtype=np.float32)
  ws_plain = networks.mapping(g_plain, base.g_vars, z)
  for c in classes:  # at transition 0 the class does not matter, and w is the old model's
    ws = networks.mapping(g_config, widened.ema, z, np.stack([c, c]), c_scale=0.0)
    # conditional mapping at c_scale 0 vs the unconditional one: other matmul shapes, sums
    # reordered (4.8e-7 abs on |w| <= 3 seen: atol 1e-6 left 2x); the class at c_scale 1e-3: 2e-3
    np.testing.assert_allclose(ws, ws_plain, rtol=1e-5, atol=1e-5)
  ws_full = networks.mapping(g_config, widened.ema, jax.numpy.stack([z[0], z[0]]), classes)
  assert float(np.abs(ws_full[0] - ws_full[1]).max()) > 1e-4  # at 1 it does
  img = networks.synthesis(g_plain, base.g_vars, ws_plain)
  core = {k: v for k, v in widened.d_params.items() if k != train.TRANSITION_HEAD}
  feats = networks.Discriminator(d_config).apply({"params": core}, img, classes,
                                                 method=networks.Discriminator.features)
  head = train._transition_head(d_config).apply(
      {"params": widened.d_params[train.TRANSITION_HEAD]}, feats["b4_fc"])
  # the widened D's core + head vs the plain D: two programs, sums may reorder (0 seen)
  np.testing.assert_allclose(head, networks.Discriminator(d_plain).apply(base.d_vars, img),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="transitional conditioning"):  # not without the ramp
    train.init_state_from(configs.load_config("embedded:quick", [
        "--config.data.defect_labels=True"]), g_config, d_config, base)

  state = train.train(config, tmp_path / "run")
  assert int(state.step) == 4
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["transition"] for r in records] == [0.0, 1.0]  # at step indices 1 and 3
  assert all(np.isfinite(r["g_loss"]) and np.isfinite(r["d_loss"]) for r in records)
  model = checkpoint.load(train.export(tmp_path / "run", tmp_path / "model"))
  assert train.TRANSITION_HEAD not in model.d_vars["params"]
  assert model.metadata["class_names"] == ["clean", "defect"]
  with caplog.at_level("WARNING"):
    train.export(tmp_path / "run", tmp_path / "early", step=2)
  assert "transitional conditioning" in caplog.text


def test_lr_scale_is_constant_then_a_cosine_ramp_to_zero():
  config = configs.load_config("embedded:quick", ["--config.lr_rampdown=0.5"])
  scales = np.array([train.lr_scale(config, step, 100) for step in range(101)])
  np.testing.assert_array_equal(scales[:51], 1.0)
  assert scales[75] == pytest.approx(0.5) and scales[100] == pytest.approx(0.0)
  assert np.all(np.diff(scales) <= 0)
  assert train.lr_scale(configs.load_config("embedded:quick"), 99, 100) == 1.0


def test_r1_gamma_switches_to_the_late_weight_at_its_kimg():
  config = configs.load_config("embedded:quick", ["--config.r1_gamma=0.5",
                                                  "--config.r1_gamma_late=2.0",
                                                  "--config.r1_gamma_late_kimg=0.064"])
  switch = 64 // config.batch_size  # the first step at 0.064 kimg
  gammas = [train.r1_gamma_at(config, step) for step in range(2 * switch)]
  assert gammas == [0.5] * switch + [2.0] * switch
  config.r1_gamma_late = 0.0  # off
  assert train.r1_gamma_at(config, 10 * switch) == 0.5


def test_r1_weight_enters_the_d_step_gradient_linearly(quick_config):
  """The R1 weight is a per-step argument of the compiled D step: with beta1 = 0 Adam's first
  moment after one step is the gradient, which must be main + gamma / 2 * interval * grad(R1)."""
  g, d = train.model_configs(quick_config, quick_config.data.resolution, 4)
  _, d_plain, d_r1 = train._cached_steps(train.step_config(quick_config).to_json(), g, d,
                                         tuple(jax.devices()))
  real = np.random.default_rng(0).uniform(-1, 1, (quick_config.batch_size, 16, 16, 4))
  key = jax.random.PRNGKey(3)

  def gradient(d_step, gamma):
    state = train.init_state(quick_config, g, d)  # fresh: the step donates its state
    state, metrics = d_step(state, real.astype(np.float32), key, 1.0, gamma)
    return jax.tree_util.tree_leaves(state.d_opt[0].mu), float(metrics["r1"])

  plain, r1_none = gradient(d_plain, 4.0)  # the plain step ignores the weight
  zero, _ = gradient(d_r1, 0.0)
  one, r1 = gradient(d_r1, 1.0)
  three, _ = gradient(d_r1, 3.0)
  assert r1_none == 0.0 and r1 > 0.0
  for p, z, o, t in zip(plain, zero, one, three):
    # gamma 0 vs the plain step: another program (it also computes R1's double backward), D's
    # reductions fused apart: 1.5e-8 abs seen; an R1 gradient that leaks is > 1e-4
    np.testing.assert_allclose(z, p, rtol=1e-4, atol=1e-6)
    # linear in gamma up to rounding of three runs, amplified x3 by the extrapolation: 3e-7 seen
    np.testing.assert_allclose(t, z + 3 * (o - z), rtol=1e-3, atol=1e-5)
  assert max(float(np.abs(o - z).max()) for o, z in zip(one, zero)) > 1e-4  # R1 counts


_SHARDED = r"""
import jax, numpy as np, configs
from jax.sharding import Mesh
from generators import train
assert len(jax.devices()) == 8, jax.devices()
cfg = configs.load_config("embedded:quick", ["--config.batch_size=8", "--config.ada_target=0.6",
                                            "--config.data.defect_labels=True"])
g, d = train.model_configs(cfg, 16, 4)
assert g.c_dim == d.c_dim == 2
rng = np.random.default_rng(0)
real = rng.uniform(-1, 1, (8, 16, 16, 4)).astype(np.float32)
real_c, gen_c = (np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)] for _ in range(2))
out = {}
for n in (1, 8):
  mesh = Mesh(np.array(jax.devices()[:n]), ("data",))
  g_step, d_plain, d_r1 = train.make_steps(cfg, g, d, mesh)
  state = train.init_state(cfg, g, d)
  state, _ = g_step(state, jax.random.PRNGKey(1), 0.5, 1.0, gen_c)
  args = (real, jax.random.PRNGKey(2), 1.0, cfg.r1_gamma, real_c, gen_c)
  if n == 8:  # data-parallel: each device takes 1 image, the gradients are summed across them
    d_r1 = d_r1.lower(state, *args).compile()  # run this executable: one compile, not two
    assert "all-reduce" in d_r1.as_text(), "no cross-device reduction in the sharded D step"
  state, m = d_r1(state, *args)
  out[n] = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
for a, b in zip(out[1], out[8]):  # 8 all-reduced per-device gradients vs one batch-8 sum, then
  np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # Adam: 1.4e-6 abs seen (1/160 of it)
print("OK")
"""


def test_data_parallel_step_equals_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env)
  assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


def test_branch_continues_a_run_from_its_checkpoint_under_a_new_config(tmp_path, quick_config):
  """A branch at step 2 with a learning-rate ramp-down from step 2 on ends where a run with the
  ramp-down from scratch ends (the ramp leaves steps 0-1 alone), not where its source does."""
  source = train.train(quick_config, tmp_path / "source")  # 4 steps, checkpoints at 2 and 4
  ramped = quick_config.copy_and_resolve_references()
  ramped.lr_rampdown = 0.5
  scratch = train.train(ramped, tmp_path / "scratch")
  with pytest.raises(ValueError, match=r"keeps checkpoints at steps \[2, 4\], not 3"):
    train.branch(tmp_path / "source", 3, tmp_path / "branch", ramped)
  wider = ramped.copy_and_resolve_references()
  wider.model.channel_max *= 2
  with pytest.raises(ValueError, match="networks differ"):
    train.branch(tmp_path / "source", 2, tmp_path / "branch", wider)
  train.branch(tmp_path / "source", 2, tmp_path / "branch", ramped)
  train.branch(tmp_path / "source", 2, tmp_path / "branch", ramped)  # again: a no-op (resume)
  with pytest.raises(ValueError, match="already holds a run"):
    train.branch(tmp_path / "scratch", 2, tmp_path / "branch", ramped)
  branched = train.train(ramped, tmp_path / "branch")
  for a, b in zip(_leaves(scratch), _leaves(branched)):
    # the same steps in two runs, possibly compiled apart (0 seen in one process); the source's
    # config differs by far more
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(_leaves(source), _leaves(branched)))
  records, source_records = ([json.loads(l) for l in (tmp_path / run / "metrics.jsonl")
                              .read_text().splitlines()] for run in ("branch", "source"))
  assert [r["step"] for r in records] == [2, 4] and records[0] == source_records[0]
  model = checkpoint.load(train.export(tmp_path / "branch", tmp_path / "model"))
  assert model.metadata["branched_from"]["step"] == 2
  assert model.metadata["branched_from"]["train_config"]["lr_rampdown"] == 0.0
