"""Parity with the official NVlabs networks, and properties of every other configuration."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from generators import convert, formats, networks

# Our port vs the official PyTorch outputs (max error / max |ref|, float32, 'highest' matmuls):
# 3e-7 to 1.8e-6 measured (D logits the most), so 1e-4 leaves 50x; a wrong layer, filter,
# noise map or clamp is off by > 1e-2.
PARITY_RTOL = 1e-4


# Jitted once per config: eagerly, each of a network's many small ops compiles on its own, which
# costs several times more than compiling the whole network once.
mapping = jax.jit(networks.mapping, static_argnums=0, static_argnames="cutoff")
synthesis = jax.jit(networks.synthesis, static_argnums=(0, 3))


def rel_err(got, want):
  got, want = np.asarray(got), np.asarray(want)
  return float(np.max(np.abs(got - want)) / (np.max(np.abs(want)) + 1e-12))


def nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def official(official_g_state, official_d_state):
  g_config, g_vars = convert.generator_from_state(official_g_state, conv_clamp=256)
  d_config, d_vars = convert.discriminator_from_state(official_d_state, conv_clamp=256)
  return g_config, g_vars, d_config, d_vars


def test_inferred_architecture_matches_fixture(official, stylegan2_ref):
  g_config, _, d_config, _ = official
  assert (g_config.z_dim, g_config.w_dim, g_config.img_resolution) == (64, 64, 32)
  assert g_config.num_ws == stylegan2_ref["ws"].shape[1] == 8
  assert g_config.architecture == "skip" and d_config.architecture == "resnet"
  assert d_config.mbstd_num_channels == 1


def test_generator_parity(official, stylegan2_ref):
  g_config, g_vars, _, _ = official
  ref = stylegan2_ref
  with jax.default_matmul_precision("highest"):
    z = jnp.asarray(ref["z"])
    errors = {
        "ws": rel_err(mapping(g_config, g_vars, z), ref["ws"]),
        "ws_trunc": rel_err(mapping(g_config, g_vars, z, psi=0.7), ref["ws_trunc"]),
    }
    for key, ws, mode in [("img", "ws", "const"), ("img_trunc", "ws_trunc", "const"),
                          ("img_mixed", "ws_mixed", "const"), ("img_nonoise", "ws", "none")]:
      img = synthesis(g_config, g_vars, jnp.asarray(ref[ws]), noise_mode=mode)
      errors[key] = rel_err(nchw(img), ref[key])
  print("generator parity (max abs err / max abs ref):", errors)
  assert max(errors.values()) < PARITY_RTOL, errors


def test_discriminator_parity(official, stylegan2_ref):
  _, _, d_config, d_vars = official
  disc = networks.Discriminator(d_config)
  with jax.default_matmul_precision("highest"):
    apply = jax.jit(disc.apply)
    fake = apply(d_vars, jnp.asarray(stylegan2_ref["img"]).transpose(0, 2, 3, 1))
    real = apply(d_vars, jnp.asarray(stylegan2_ref["d_real"]).transpose(0, 2, 3, 1))
  errors = {"fake": rel_err(fake, stylegan2_ref["d_logits_fake"]),
            "real": rel_err(real, stylegan2_ref["d_logits_real"])}
  print("discriminator parity:", errors)
  assert max(errors.values()) < PARITY_RTOL, errors


def test_inversion_gradient_parity(official, stylegan2_ref):
  g_config, g_vars, _, _ = official

  def loss(ws):
    return jnp.mean(networks.synthesis(g_config, g_vars, ws) ** 2)

  with jax.default_matmul_precision("highest"):
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(stylegan2_ref["ws"]))
  errors = {"loss": rel_err(value, stylegan2_ref["grad_loss"]),
            "grad_ws": rel_err(grad, stylegan2_ref["grad_ws"])}
  print("inversion gradient parity:", errors)
  assert max(errors.values()) < PARITY_RTOL, errors


def test_state_dict_round_trip(official, official_g_state, official_d_state):
  g_config, g_vars, d_config, d_vars = official
  g_back = convert.generator_to_state(g_vars)
  d_back = convert.discriminator_to_state(d_config, d_vars)
  for original, back in [(official_g_state, g_back), (official_d_state, d_back)]:
    expected = {k for k in original if not k.endswith("resample_filter")}
    assert set(back) == expected
    for k in expected:
      np.testing.assert_array_equal(back[k], original[k], err_msg=k)  # transposes only: exact


def test_conversion_errors_name_the_tensor(official_g_state):
  state = dict(official_g_state)
  state["synthesis.b8.conv0.weight"] = np.zeros((64, 64, 3, 2), np.float32)
  with pytest.raises(convert.ConversionError, match="synthesis.b8.conv0.weight"):
    convert.generator_from_state(state)
  state = dict(official_g_state)
  del state["synthesis.b16.conv1.affine.bias"]
  state["synthesis.b16.extra"] = np.zeros(3, np.float32)
  with pytest.raises(convert.ConversionError, match=r"missing keys \(1\).*b16.conv1.affine.bias"
                     r"(.|\n)*unexpected keys \(1\).*b16.extra"):
    convert.generator_from_state(state)
  with pytest.raises(convert.ConversionError, match="not a StyleGAN2 generator"):
    convert.generator_from_state({"foo.weight": np.zeros((2, 2))})


TINY = networks.GeneratorConfig(z_dim=8, w_dim=8, img_resolution=16, channel_base=64,
                                channel_max=16, mapping_layers=2)


@pytest.mark.parametrize("architecture,channels,clamp", [
    ("resnet", 4, None), ("orig", 1, 256.0), ("skip", 3, 0.5)])
def test_other_architectures_round_trip_through_shapes(architecture, channels, clamp):
  """Any config the official code accepts converts both ways and infers back from shapes."""
  config = dataclasses.replace(TINY, architecture=architecture, img_channels=channels,
                               conv_clamp=clamp)
  variables = networks.init_generator(config, jax.random.PRNGKey(0))
  state = convert.generator_to_state(variables)
  inferred, back = convert.generator_from_state(state, conv_clamp=clamp)
  assert inferred == config
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
  ws = mapping(config, variables, z)
  img = synthesis(config, variables, ws)
  assert img.shape == (2, 16, 16, channels)
  # exact: the same jitted program (an equal static config) on bit-identical weights
  np.testing.assert_array_equal(img, synthesis(inferred, back, ws))
  if clamp is not None:
    assert float(jnp.max(jnp.abs(img))) <= clamp * (2 if architecture == "skip" else 1) + 1e-6


def test_noise_modes_and_explicit_noise():
  variables = networks.init_generator(TINY, jax.random.PRNGKey(0))
  # Give every layer a noise strength so that noise shows in the output.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.ones_like(x) if "noise_strength" in jax.tree_util.keystr(p) else x,
      variables)
  ws = mapping(TINY, variables, jnp.ones((2, 8)))
  const = synthesis(TINY, variables, ws, "const")
  none = synthesis(TINY, variables, ws, "none")
  r1 = synthesis(TINY, variables, ws, "random", key=jax.random.PRNGKey(1))
  r2 = synthesis(TINY, variables, ws, "random", key=jax.random.PRNGKey(2))
  assert not np.allclose(const, none) and not np.allclose(r1, r2)
  # An explicit noise dict equal to the stored buffers reproduces 'const'.
  buffers = variables["buffers"]["synthesis"]
  noise = {name: buffers[name.split(".")[0]][name.split(".")[1]]["noise_const"]
           for name in TINY.noise_layers}
  # explicit maps vs the stored buffers: two programs, same arithmetic, may fuse apart (0 seen)
  np.testing.assert_allclose(synthesis(TINY, variables, ws, "none", noise), const,
                             rtol=1e-5, atol=1e-6)
  # Zero explicit noise equals 'none'.
  zeros = {k: jnp.zeros((2, r, r)) for k, r in TINY.noise_layers.items()}
  np.testing.assert_allclose(synthesis(TINY, variables, ws, "const", zeros), none,
                             rtol=1e-5, atol=1e-6)  # as above; 0 * strength is added (0 seen)


def test_random_noise_is_distinct_per_layer_and_image(monkeypatch):
  """'random' draws its own map for every noise layer and every image (flaxmodels fed one map
  to every layer): record each normal draw of a synthesis call and compare them."""
  variables = networks.init_generator(TINY, jax.random.PRNGKey(0))
  ws = mapping(TINY, variables, jnp.ones((2, 8)))
  drawn, normal = [], jax.random.normal
  def recording_normal(key, shape=(), dtype=float):
    out = normal(key, shape, dtype)
    if not isinstance(out, jax.core.Tracer):  # Flax checks param shapes with abstract inits
      drawn.append(np.asarray(out))
    return out
  monkeypatch.setattr(jax.random, "normal", recording_normal)
  networks.synthesis(TINY, variables, ws, "random", key=jax.random.PRNGKey(1))
  assert [m.shape for m in drawn] == [(2, r, r) for r in TINY.noise_layers.values()]
  flat = np.stack([m.reshape(2, -1)[:, :16] for m in drawn])  # every map has >= 16 pixels
  per_image = flat.reshape(-1, 16)
  correlation = np.corrcoef(per_image) - np.eye(len(per_image))
  assert np.max(np.abs(correlation)) < 0.95, "two layers or two images got the same noise"


def test_truncation_cutoff():
  variables = networks.init_generator(TINY, jax.random.PRNGKey(0))
  variables["buffers"]["mapping"]["w_avg"] = jnp.full((8,), 0.5)
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 8))
  full = networks.mapping(TINY, variables, z)
  cut = networks.mapping(TINY, variables, z, psi=0.0, cutoff=3)
  np.testing.assert_allclose(cut[:, :3], 0.5)  # exact: w_avg + 0 * (w - w_avg)
  np.testing.assert_allclose(cut[:, 3:], full[:, 3:])  # exact: jnp.where keeps w there


def test_config_f_shapes():
  """The 1024 px FFHQ config-F generator: 18 ws, 32 channels at 1024 px, 512-d latents."""
  config = networks.GeneratorConfig()
  shapes = jax.eval_shape(lambda: networks.init_generator(config, jax.random.PRNGKey(0)))
  assert config.num_ws == 18
  assert shapes["params"]["synthesis"]["b1024"]["torgb"]["weight"].shape == (1, 1, 32, 3)
  assert shapes["params"]["synthesis"]["b4"]["const"].shape == (4, 4, 512)
  assert shapes["buffers"]["synthesis"]["b1024"]["conv1"]["noise_const"].shape == (1024, 1024)


def test_config_f_architecture_is_inferred_from_official_shapes():
  """A config-F state dict without kwargs (a bare ffhq state dict) infers config F itself; the
  tensors are zero-stride views, so nothing of 1024 px size is allocated."""
  g_kwargs = dict(z_dim=512, w_dim=512, img_resolution=1024, img_channels=3,
                  mapping_kwargs={}, synthesis_kwargs={})
  d_kwargs = dict(img_resolution=1024, img_channels=3)
  fir = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64  # NVlabs' stored filter
  views = lambda spec: {k: fir if k.endswith("resample_filter") else
                        np.broadcast_to(np.float32(0), shape) for k, shape in spec.items()}
  g_state = views(formats.generator_spec(g_kwargs))
  d_state = views(formats.discriminator_spec(d_kwargs))
  assert convert.generator_config_from_state(g_state) == networks.GeneratorConfig()
  assert convert.discriminator_config_from_state(d_state) == networks.DiscriminatorConfig()
  assert formats.generator_spec(formats.infer_generator_kwargs(g_state)) == (
      formats.generator_spec(g_kwargs))


def test_discriminator_features_and_batch_errors():
  config = networks.DiscriminatorConfig(img_resolution=16, img_channels=4, channel_base=64,
                                        channel_max=16)
  variables = networks.init_discriminator(config, jax.random.PRNGKey(0))
  img = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 4))
  feats = jax.jit(functools.partial(networks.Discriminator(config).apply,
                                    method=networks.Discriminator.features))(variables, img)
  assert feats["b16"].shape == (4, 8, 8, 8) and feats["b8"].shape == (4, 4, 4, 16)
  assert feats["logits"].shape == (4, 1) and feats["b4_fc"].shape == (4, 16)
  with pytest.raises(ValueError, match="divisible by the minibatch-stddev group size"):
    networks.Discriminator(config).apply(variables, img[:3].repeat(2, 0)[:6])
  with pytest.raises(ValueError, match="NHWC"):
    networks.Discriminator(config).apply(variables, img.transpose(0, 3, 1, 2))


def test_scale_channels_gradient_equals_autodiff():
  """The hand-written VJP (scales' gradient as a GEMV) equals autodiff of the plain product:
  first and second order, and under vmap (how the engine runs its per-image step)."""
  kx, ks, kc = jax.random.split(jax.random.PRNGKey(3), 3)
  x = jax.random.normal(kx, (2, 5, 7, 6))
  scales = jax.random.normal(ks, (2, 6))
  cotangent = jax.random.normal(kc, x.shape)
  plain = lambda x, s: x * s[:, None, None, :]
  loss = lambda scale: lambda x, s: jnp.sum(jnp.sin(scale(x, s)) * cotangent)
  # hand-written VJP (a GEMV over H*W = 35 terms) vs autodiff's reductions: a few ulps (0 seen);
  # a wrong axis or a missing term is off by O(1)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)

  for got, want in zip(jax.grad(loss(networks.scale_channels), argnums=(0, 1))(x, scales),
                       jax.grad(loss(plain), argnums=(0, 1))(x, scales)):
    close(got, want)
  second = lambda scale: jax.grad(lambda s: jnp.sum(jax.grad(loss(scale))(x, s) ** 2))(scales)
  close(second(networks.scale_channels), second(plain))
  per_image = lambda scale: jax.vmap(jax.grad(
      lambda xi, si: jnp.sum(jnp.sin(scale(xi[None], si[None]))), argnums=1))(x, scales)
  close(per_image(networks.scale_channels), per_image(plain))
  # The modulated conv scales by styles and demodulation coefficients through it.
  weight = jax.random.normal(kc, (3, 3, 6, 6))
  jaxpr = str(jax.make_jaxpr(networks.modulated_conv2d)(x, weight, scales))
  assert jaxpr.count("custom_vjp_call") == 2, jaxpr


def _eqns(fn, *args) -> int:
  return len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)


def test_feature_hook_reads_blends_and_stops_early():
  """SFE's feature hook: reading a layer changes nothing, replacing it by itself changes
  nothing, the blend is linear in the scale, and the early stop returns the same activation
  from a shorter program."""
  variables = networks.init_generator(TINY, jax.random.PRNGKey(0))
  ws = mapping(TINY, variables, jax.random.normal(jax.random.PRNGKey(1), (2, 8)))
  img = networks.synthesis(TINY, variables, ws)
  plain = functools.partial(networks.synthesis, TINY)
  for layer in ("b4.conv1", "b8.conv0", "b8.conv1"):
    read, feature = networks.synthesis(TINY, variables, ws, feature_layer=layer,
                                       return_features=True)
    np.testing.assert_array_equal(read, img)
    # A read-only hook adds no operation to the program (the hook costs nothing unused).
    assert _eqns(lambda v, w, layer=layer: networks.synthesis(
        TINY, v, w, feature_layer=layer, return_features=True), variables, ws) == _eqns(
            plain, variables, ws)
    early = networks.synthesis_features(TINY, variables, ws, layer)
    np.testing.assert_array_equal(early, feature)
    assert _eqns(lambda v, w, layer=layer: networks.synthesis_features(TINY, v, w, layer),
                 variables, ws) < _eqns(plain, variables, ws) // 2
    np.testing.assert_allclose(networks.synthesis(TINY, variables, ws, feature_layer=layer,
                                                  features=feature), img, atol=1e-6)
    other = feature + jax.random.normal(jax.random.PRNGKey(2), feature.shape)
    half = networks.synthesis(TINY, variables, ws, feature_layer=layer, features=other,
                              feature_scale=0.5)
    assert float(jnp.abs(half - img).max()) > 1e-2
    np.testing.assert_allclose(half, networks.synthesis(
        TINY, variables, ws, feature_layer=layer, features=0.5 * feature + 0.5 * other),
        atol=1e-5)
  with pytest.raises(ValueError, match="b4.const, b4.conv1"):
    networks.synthesis(TINY, variables, ws, feature_layer="b64.conv1", return_features=True)
  with pytest.raises(ValueError, match=r"must be \[B, 8, 8, "):
    networks.synthesis(TINY, variables, ws, feature_layer="b8.conv1", features=jnp.zeros(
        (2, 4, 4, 3)))


def test_feature_layer_names_follow_sfe_indices():
  config_f = networks.GeneratorConfig()
  assert networks.default_feature_layer(config_f) == "b64.conv1"
  assert networks.feature_layer_index(config_f, "b64.conv1") == 9  # SFE's w_feats[9]
  assert networks.feature_layer_name(config_f, 9) == "b64.conv1"
  assert len(networks.feature_layers(config_f)) == 18  # rosinality: const + 17 convs
  assert networks.default_feature_layer(TINY) == "b4.conv1"
