"""The super-resolution network G_sr (issue 17): its training copy, the reference's configs and
checkpoints, training on the procedural scenes, and (3D-consistent) SR of view sets.
"""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax import main as ivd_main
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.configs import common
from ivd_jax.configs import sample as sample_config
from ivd_jax.configs import sr as sr_config
from ivd_jax.data import procedural
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.evaluation import superres as sr_eval
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.models import unet as unet_lib
from ivd_jax.pipelines import train
from ivd_jax.roles import sr as sr_lib
from ivd_jax.sampling import networks
from ivd_jax.sampling import superres
from ivd_jax.tools import convert_reference
from ivd_jax.training import checks
from ivd_jax.training import state as state_lib

# Steps of the train-mode test; the shipped G_sr's held-out single views and 3x9 view sets, and
# the nearest cameras each view is compared with.
TRAIN_STEPS = 40
SCENES = 16
VIEWSET_SCENES = 2
NEIGHBOURS = 4
PSNR_GAIN = 0.5  # dB over bilinear upsampling, at least (measured 0.89 and 1.16)
SHIPPED_SR = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'sr16to32' / 'sr'
REFERENCE_SR = {'imagenet256': 'rgbd_imagenet_adm_256_128_small_sr',
                'singlecategory256': 'rgbd_singlecategory_adm_256_128_small_sr'}


def _torch_bilinear(low: np.ndarray, size: int) -> np.ndarray:
  """torch.nn.functional.interpolate(mode='bilinear', align_corners=False), written out: source
  coordinate (i + 0.5) h / size - 0.5 clamped at 0, neighbours clamped at the border."""
  h = low.shape[0]
  src = np.maximum((np.arange(size) + 0.5) * h / size - 0.5, 0.0)
  i0 = np.floor(src).astype(int)
  i1 = np.minimum(i0 + 1, h - 1)
  w = (src - i0)[:, None]
  rows = low[i0] * (1 - w[..., None]) + low[i1] * w[..., None]
  w = w[:, 0][None, :, None]
  return rows[:, i0] * (1 - w) + rows[:, i1] * w


def test_resizes_match_the_references_libraries():
  """Lanczos / nearest are PIL's (the reference's torchvision Resize on PIL images), bilinear is
  torch's F.interpolate(align_corners=False) of SuperResCFG."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (32, 32, 2)).astype(np.float32)
  for size in (16, 11):
    for method, fn in ((Image.LANCZOS, sr_lib.lanczos_resize), (Image.NEAREST,
                                                                sr_lib.nearest_resize)):
      pil = np.stack([np.asarray(Image.fromarray(x[..., c], mode='F').resize((size, size),
                                                                              method))
                      for c in range(2)], -1)
      np.testing.assert_allclose(fn(jnp.asarray(x), size), pil, atol=1e-6)
  low = x[:16, :16]
  np.testing.assert_allclose(sr_lib.bilinear_upsample(jnp.asarray(low), 32),
                             _torch_bilinear(low, 32), atol=1e-6)


def test_low_resolution_copy_is_the_references():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 4)).astype(np.float32))
  key = jax.random.PRNGKey(4)
  copy = np.asarray(sr_lib.low_resolution_copy(x, key, low_resolution=16, blur_sigma_max=1.0))
  assert copy.shape == (3, 16, 16, 4)
  # Depth: nearest (pixels 1, 3, 5, ... of a 2x reduction), never blurred.
  np.testing.assert_array_equal(copy[..., 3], np.asarray(x)[:, 1::2, 1::2, 3])
  # Colour: Lanczos, clipped to the image range, then the 3 x 3 Gaussian of sigma
  # U(0, 1) + 1e-3 drawn per example (cv2's reflect-101 border).
  sigma = np.asarray(jax.random.uniform(key, (3,))) + 1e-3
  for i in range(3):
    lanczos = np.clip(np.asarray(sr_lib.lanczos_resize(x[i, ..., :3], 16)), -1, 1)
    taps = np.exp(-0.5 * (np.arange(-1, 2) / sigma[i])**2)
    taps /= taps.sum()
    p = np.pad(lanczos, ((1, 1), (1, 1), (0, 0)), mode='reflect')
    rows = sum(taps[k] * p[k:k + 16] for k in range(3))
    blurred = sum(taps[k] * rows[:, k:k + 16] for k in range(3))
    np.testing.assert_allclose(copy[i, ..., :3], blurred, atol=1e-5)
  assert len(set(np.round(sigma, 4))) == 3 and sigma.max() <= 1.001
  # The network input: x_t beside the copy upsampled bilinearly, 8 channels.
  cond = sr_lib.condition_from_low(jnp.asarray(copy), 32)
  net_in = roles.SR.network_input(x, cond, key)
  assert net_in.shape == (3, 32, 32, 8) and roles.SR.in_channels == 8
  np.testing.assert_array_equal(net_in[..., :4], x)
  np.testing.assert_allclose(net_in[0, ..., 4:], _torch_bilinear(copy[0], 32), atol=1e-6)
  np.testing.assert_array_equal(cond['mask'], 1.0)


def test_presets_are_the_reference_configs(fixtures_dir):
  """imagenet256 / singlecategory256 build the reference's 256_128 SR networks exactly."""
  counts = json.loads((fixtures_dir / 'adm_param_counts.json').read_text())
  for preset, name in REFERENCE_SR.items():
    config = sr_config.get_config(preset)
    ref = counts[name]['constructor_kwargs']
    assert roles.role_of(config) is roles.SR and config.sr.low_resolution == 128
    model = roles.SR.network(config.model)
    assert (model.image_size, model.in_channels, model.model_channels) == (
        ref['image_size'], ref['in_channels'], ref['model_channels'])
    assert tuple(model.attention_resolutions) == tuple(ref['attention_resolutions'])
    shapes = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 8)), jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32) if model.num_classes else None)
    assert state_lib.param_count(shapes) == counts[name]['total_params']
    assert (config.train.batch_size, config.optim.lr, config.optim.ema_decay) == (32, 1e-4, 0.9999)
    assert config.diffusion.p_uncond == 0.1 and (config.data.near, config.data.far) == (0.5, 100.0)
    checks.validate_config(config, num_devices=8)
  assert state_lib.param_count(shapes) == 105_202_052
  tiny = sr_config.get_config('tiny')
  checks.validate_config(tiny, num_devices=8)
  assert (tiny.data.resolution, tiny.sr.low_resolution) == (64, 32)
  # SR presets belong to the SR role and the 128 px presets to G_u / G_c.
  with pytest.raises(ValueError, match='imagenet256'):
    common.train_config('imagenet256', role='uncond')
  with pytest.raises(ValueError, match='singlecategory256'):
    common.train_config('dogs128', role='sr')
  # A converted reference checkpoint has no sr section: half its size, the reference's 256_128.
  assert sr_lib.low_resolution_of({'model': {'image_size': 256}}) == 128
  # The copy must be smaller than the network's images.
  bad = sr_config.get_config('tiny')
  bad.sr.low_resolution = 64
  with pytest.raises(errors.ConfigError, match='sr.low_resolution'):
    roles.SR.make_condition(jnp.zeros((1, 64, 64, 4)), jax.random.PRNGKey(0), bad)


def _reference_name(flax_name: str) -> str:
  """The reference's state-dict key of an ivd_jax parameter (convert_reference's map inverted)."""
  # pylint: disable=protected-access
  layers = {v: k for k, v in convert_reference._LAYERS.items()}
  top = {v: k for k, v in convert_reference._TOP.items()}
  path, leaf = flax_name.rsplit('/', 1)
  leaf = 'bias' if leaf == 'bias' else 'weight'
  if path in top:
    return f'{top[path]}.{leaf}'
  block, _, layer = path.partition('/')
  module = '.'.join(block.rsplit('_', 2)) if block.startswith(('input', 'output')) else (
      '.'.join(block.rsplit('_', 1)))
  return f'{module}.{layers[layer]}.{leaf}' if layer else f'{module}.{leaf}'


def _torch_layout(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:  # conv [kh, kw, in, out] -> [out, in, kh, kw]
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2 and name.endswith(('qkv.weight', 'proj_out.weight')):  # Conv1d
    return (shape[1], shape[0], 1)
  if len(shape) == 2 and not name.startswith('label_emb'):  # Linear
    return (shape[1], shape[0])
  return shape


def _reference_state_dict(model, rng, *, zero_copy: bool = False) -> dict[str, np.ndarray]:
  """A state dict with every tensor of the reference AdmUnet2d of `model`, in its names and
  layouts. zero_copy: constant tensors that take no memory (the 105 M networks), except the
  first conv."""
  state = {}
  for name, shape in convert_reference.param_shapes(model).items():
    key = _reference_name(name)
    assert convert_reference.flax_name(key) == name
    shape = _torch_layout(key, shape)
    if zero_copy and key != 'input_blocks.0.0.weight':
      state[key] = np.broadcast_to(np.float32(0.5), shape)
    else:
      state[key] = rng.standard_normal(shape, np.float32)
  return state


@pytest.mark.parametrize('preset', sorted(REFERENCE_SR))
def test_converter_covers_reference_sr_checkpoints(preset, fixtures_dir):
  """No reference SR weights can be made here, so: a reference-shaped state dict (every tensor
  the reference's AdmUnet2d has, in its layout) converts completely, and its tensor count and
  per-module sizes are the reference's (the fixture, counted from the authors' code)."""
  fixture = json.loads((fixtures_dir / 'adm_param_counts.json').read_text())[REFERENCE_SR[preset]]
  kwargs = fixture['constructor_kwargs']
  model = convert_reference.unet_from_kwargs(kwargs)
  state = _reference_state_dict(model, np.random.default_rng(0), zero_copy=True)
  assert len(state) == fixture['num_param_tensors']
  by_module = {}
  for key, value in state.items():
    top = key.split('.')[0]
    by_module[top] = by_module.get(top, 0) + value.size
  assert by_module == fixture['params_by_top_module']
  assert state['input_blocks.0.0.weight'].shape == (128, 8, 3, 3)
  converted, params = convert_reference.from_state_dict(state, kwargs)
  assert converted == model and state_lib.param_count(params) == fixture['total_params']
  # Input channel c of the reference's first conv is input channel c here ([x_t, low-res]).
  np.testing.assert_array_equal(params['input_blocks_0_0']['kernel'][1, 2],
                                state['input_blocks.0.0.weight'][:, :, 1, 2].T)
  config = convert_reference.export_config(
      converted, {'backbone': {'args': kwargs}, 'dataset': {'args': {'image_size_lr': 128}}})
  assert config.role == 'sr' and config.sr.low_resolution == 128


def test_converted_sr_checkpoint_loads_as_g_sr(tmp_path):
  """The command line on a small SR-shaped reference network: the export is a G_sr whose low
  resolution comes from the reference config's dataset (else half the image size)."""
  kwargs = dict(image_size=32, in_channels=8, out_channels=4, model_channels=32,
                num_res_blocks=1, num_classes=None, channel_mult=[1, 2],
                attention_resolutions=[16], num_groups=32, num_heads=None, num_head_channels=32,
                dropout=0.0, use_fp16=True)
  model = convert_reference.unet_from_kwargs(kwargs)
  state = _reference_state_dict(model, np.random.default_rng(1))
  np.savez(tmp_path / 'ref.npz', **{f'param/{k}': v for k, v in state.items()})
  for dataset, low in (({'args': {'image_size': 32, 'image_size_lr': 8}}, 8), (None, 16)):
    reference_config = {'backbone': {'args': kwargs}}
    if dataset:
      reference_config['dataset'] = dataset
    (tmp_path / 'config.json').write_text(json.dumps(reference_config))
    out = tmp_path / f'export{low}'
    assert convert_reference.main(['--checkpoint', str(tmp_path / 'ref.npz'), '--config',
                                   str(tmp_path / 'config.json'), '--out', str(out)]) == 0
    net, config = networks.load_network(str(out), field='sample.sr', ema=True)
    assert net.role is roles.SR and config.role == 'sr'
    assert sr_lib.low_resolution_of(config) == low
    _, params = convert_reference.from_state_dict(state, kwargs)
    np.testing.assert_array_equal(net.params['input_blocks_0_0']['kernel'],
                                  params['input_blocks_0_0']['kernel'])


# ---------------------------------------------------------------------------------------------
# The SR stage of sampling: sharding, the two modes, the sample mode's exports.
# ---------------------------------------------------------------------------------------------
CUSTOM = ((0.0, 0.0, 1.0), (0.15, 0.0, 1.0), (-0.15, 0.1, 1.0))


def _sr_network(size: int, seed: int = 0) -> networks.Network:
  """A small G_sr with random weights everywhere (the zero-initialised layers too)."""
  model = unet_lib.UNet(image_size=size, in_channels=8, model_channels=16, channel_mult=(1, 2),
                        num_res_blocks=1, attention_resolutions=(), num_head_channels=16,
                        num_groups=8)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 8)),
                      jnp.zeros((1,), jnp.int32))['params']
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  return networks.Network(roles.SR, model, params)


def _sr_sample_section(**overrides):
  s = common.sample_section()
  s.update(dict(near=0.5, far=100.0, erode=1, atol=0.1, rtol=0.1, sr_steps=2, guidance=0.0,
                sr_guidance=0.0, progress=False))
  s.update(overrides)
  return s


def _sr_sampler(net, mode, mesh_shape=(-1, 1), devices=None):
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': mesh_shape}), devices=devices)
  settings = superres.SRSettings.from_config(_sr_sample_section(sr_mode=mode))
  return superres.SuperResSampler(net, settings, mesh=mesh,
                                  schedule=schedule_lib.linear_schedule(), low_resolution=16)


def _true_custom_views(num_scenes, resolution):
  views = np.asarray(cameras.views_from_poses(jnp.asarray(CUSTOM, jnp.float32)), np.float32)
  truth = np.stack([np.stack([procedural.render_rgbd(procedural.sample_scene(100 + i), v,
                                                     resolution) for v in views])
                    for i in range(num_scenes)])
  return truth, np.broadcast_to(views, (num_scenes,) + views.shape)


def test_sr_stage_modes_and_batches():
  """The SR sampler's mechanics with a random G_sr on 8 devices (what it pins is measured with
  the trained network below)."""
  net = _sr_network(32)
  truth, views = _true_custom_views(3, 32)
  low = np.stack([np.asarray(depth_lib.from_network(sr_lib.nearest_resize(
      depth_lib.to_network(jnp.asarray(t)), 16))) for t in truth])
  labels = np.full(3, -1, np.int32)
  runs, samplers = {}, {}
  for mode in ('independent', 'consistent'):
    samplers[mode] = _sr_sampler(net, mode)
    runs[mode], _ = superres.super_resolve(samplers[mode], low, views, seed=3,
                                           instance_ids=[0, 1, 2], labels=labels, batch_size=8)
  # Instance 2 alone (padded to the 8 devices) is the instance of the batch of 3.
  one, _ = superres.super_resolve(samplers['consistent'], low[[2]], views[[2]], seed=3,
                                  instance_ids=[2], labels=labels[:1], batch_size=1)
  ind, con = runs['independent'], runs['consistent']
  assert con.rgbd.shape == (3, 3, 32, 32, 4) and ind.cond_rgbd is None
  np.testing.assert_allclose(one.rgbd[0], con.rgbd[2], atol=2e-4)
  assert np.abs(con.rgbd[0] - con.rgbd[1]).mean() > 0.05
  # View 0 has nothing before it: both modes give the same view (different compilations).
  np.testing.assert_allclose(ind.rgbd[:, 0], con.rgbd[:, 0], atol=1e-5)
  assert con.cond_mask[:, 0].max() == 0.0 and set(np.unique(con.cond_mask)) <= {0.0, 1.0}
  assert (con.cond_mask_rgb <= con.cond_mask).all()
  with pytest.raises(errors.ConfigError, match='sample.sr_mode'):
    superres.SRSettings.from_config(_sr_sample_section(sr_mode='joint')).validate()
  with pytest.raises(errors.ConfigError, match='sample.sr'):
    superres.super_resolve(samplers['consistent'], truth[:1], views[:1], seed=0,
                           instance_ids=[0], labels=labels[:1], batch_size=1)


def test_sample_mode_sr_stage_and_sr_source(tmp_path, fixtures_dir):
  """configs/sample.py with sample.sr: the fixture G_u / G_c (32 px) then a 32 -> 64 px G_sr
  whose chains start half-way (sr_start 0.5); then sample.sr_source super-resolves that run's
  views.npz again, independently."""
  with np.load(fixtures_dir / 'adm_small_uncond.npz') as f:
    state = {k[len('param/'):]: f[k] for k in f.files if k.startswith('param/')}
  kwargs = json.loads((fixtures_dir / 'adm_small_uncond.json').read_text())['constructor_kwargs']
  model_u, params_u = convert_reference.from_state_dict(state, kwargs)
  model_c, params_c = model_u.clone(in_channels=10), unet_lib.widen_input(params_u, 10)
  sr = _sr_network(64)
  for name, model, params in (('gu', model_u, params_u), ('gc', model_c, params_c),
                              ('sr', sr.model, sr.params)):
    checkpoint.save_params(str(tmp_path / name), params,
                           convert_reference.export_config(model).to_dict())
  config = sample_config.get_config('tiny')
  s = config.sample
  s.update(_sr_sample_section(
      uncond=str(tmp_path / 'gu'), cond=str(tmp_path / 'gc'), sr=str(tmp_path / 'sr'),
      sampler_uncond='ddim', steps_uncond=2, steps_cond=2, viewset='custom',
      custom_poses=CUSTOM, num_instances=2, video_frames=2, run_name='run', sr_start=0.5))
  manifest = ivd_main.run(config, str(tmp_path / 'wd'))
  run = tmp_path / 'wd' / 'samples' / 'run'
  sr_dir = run / 'sr'
  saved = json.loads((sr_dir / 'manifest.json').read_text())
  assert manifest['sr']['mode'] == saved['mode'] == 'consistent' and saved['start'] == 0.5
  assert (saved['resolution'], saved['low_resolution'], saved['source_resolution']) == (64, 32, 32)
  assert 0.0 < saved['consistency']['covisible'] <= 1.0
  with np.load(sr_dir / 'views.npz') as f:
    assert f['rgbd'].shape == (2, 3, 64, 64, 4)
    with np.load(run / 'views.npz') as g:
      np.testing.assert_array_equal(f['views'], g['views'])
  for entry in saved['instances']:
    inst = sr_dir / entry['dir']
    for key in ('grid_rgb', 'grid_depth', 'ply', 'npz', 'gif'):
      assert (inst / entry['files'][key]).is_file()
    assert len(entry['files']['views']) == 3 and (inst / 'view_01_cond.png').is_file()
    assert Image.open(inst / 'view_00_rgb.png').size == (64, 64)
  # The same views from the run folder, independently, into another workdir.
  s.update(dict(sr_source=str(run), sr_mode='independent', run_name=''))
  again = ivd_main.run(config, str(tmp_path / 'wd2'))
  assert again['dir'] == str(tmp_path / 'wd2' / 'samples' / 'run' / 'sr')
  with np.load(tmp_path / 'wd2' / 'samples' / 'run' / 'sr' / 'views.npz') as f:
    with np.load(sr_dir / 'views.npz') as g:
      # View 0 of each instance: the same keys and input in both modes.
      np.testing.assert_allclose(f['rgbd'][:, 0], g['rgbd'][:, 0], atol=1e-5)
  assert again['mode'] == 'independent' and again['source'] == str(run / 'views.npz')
  s.sr = ''
  with pytest.raises(errors.ConfigError, match='sample.sr'):
    ivd_main.run(config, str(tmp_path / 'wd3'))


# ---------------------------------------------------------------------------------------------
# G_sr trained by this project: configs/sr.py:tiny at 16 -> 32 px on the procedural scenes
# (benchmarks/sr.py `tiny_16_32`, 10 000 steps), its EMA weights in bfloat16 in
# tests/fixtures/sr16to32/sr (tests/fixtures/README.md: the command that trained it). The
# protocol is benchmarks/sr.py's (shared functions); benchmarks/README.md has its full run.
# ---------------------------------------------------------------------------------------------
def _benchmark():
  spec = importlib.util.spec_from_file_location(
      'benchmarks_sr', pathlib.Path(__file__).resolve().parents[1] / 'benchmarks' / 'sr.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def bench():
  return _benchmark()


def test_train_mode_trains_g_sr(tmp_path, bench):
  """The real train mode on the SR role: the loss falls and a preview grid is written.

  Measured 2026-12-01 (logged every 10 steps, still in the 50-step warm-up): 0.990, 0.929, 0.794,
  0.608.
  """
  config = bench.tiny_16_32(TRAIN_STEPS)
  config.data.num_examples = 64
  config.log.every_steps = TRAIN_STEPS // 4
  # One preview grid at the end: the SR role's condition through training/train_logging.
  config.log.sample_every_steps, config.log.sample_steps = TRAIN_STEPS, 4
  last = train.train_and_evaluate(config, str(tmp_path))
  losses = [json.loads(line)['loss'] for line in open(tmp_path / 'metrics.jsonl')
            if 'loss' in line]
  print('losses', losses)
  assert last['step'] == TRAIN_STEPS and losses[-1] < 0.8 * losses[0]
  assert (tmp_path / 'samples' / f'step_{TRAIN_STEPS:08d}.png').is_file()


@pytest.fixture(scope='module')
def shipped_sr():
  if not (SHIPPED_SR / 'config.json').is_file():
    pytest.fail(f'the shipped G_sr is missing from {SHIPPED_SR} (tests/fixtures/README.md); '
                'restore it with `git checkout -- tests/fixtures`', pytrace=False)
  return str(SHIPPED_SR)


def test_shipped_sr_beats_bilinear_on_held_out_scenes(bench, shipped_sr):
  """View 0 of 16 held-out procedural scenes, 16 -> 32 px, against the true 32 px renders
  (2026-12-01; benchmarks/README.md has the same on 64 scenes):

  | method | PSNR | z-buffer MAE | depth abs-rel |
  |---|---|---|---|
  | bilinear upsampling | 20.44 dB | 0.01205 | 0.0354 |
  | G_sr, 5 DDIM steps from sr_start 0.15 | 21.34 dB | 0.01074 | 0.0385 |
  | G_sr, 1 step from sr_start 0.1 (predicted x_0) | 21.60 dB | 0.01172 | 0.0426 |

  G_sr beats bilinear upsampling in colour and in the z-buffer depth it is trained on; the
  abs-rel of linear depth, where a z-buffer error on the far background is magnified, stays
  worse.
  """
  truth, views = bench.true_views(SCENES, np.array([[0.0, 0.0, 1.0]]), 32)
  low, up = bench.low_and_bilinear(truth, 16)
  views = np.broadcast_to(views, (SCENES,) + views.shape)
  got = {'bilinear': sr_eval.sr_error(up, truth, near=bench.NEAR, far=bench.FAR)}
  for steps, start in ((5, 0.15), (1, 0.1)):
    s = bench.sample_config(shipped_sr, sr_steps=steps, mode='independent', start=start)
    sr, _ = bench.super_resolve(s, low, views)
    got[f'{steps}@{start}'] = sr_eval.sr_error(sr, truth, near=bench.NEAR, far=bench.FAR)
  print(json.dumps(got))
  base = got['bilinear']
  for key in ('5@0.15', '1@0.1'):
    assert got[key]['psnr'] > base['psnr'] + PSNR_GAIN, key
    assert got[key]['zbuf_mae'] < base['zbuf_mae'], key


def test_consistent_sr_is_closer_to_the_true_views_consistency(bench, shipped_sr):
  """The 3x9 view sets of 2 held-out scenes from their 16 px copies (10 DDIM steps from
  sr_start 0.15; pairwise consistency over each view's 4 nearest cameras; TSED over the 2
  nearest), 2026-12-01:

  | views | consistency PSNR | depth agreement | TSED (median SED) | PSNR vs truth | z-buffer MAE |
  |---|---|---|---|---|---|
  | true (the target) | 26.78 dB | 0.998 | 0.433 (2.17 px) | | |
  | bilinear upsampling | 28.80 dB | 0.928 | 0.033 (2.11 px) | 21.89 dB | 0.0197 |
  | independent SR | 26.07 dB | 0.870 | 0.150 (2.49 px) | 22.73 dB | 0.0151 |
  | consistent SR | 29.32 dB | 0.965 | 0.267 (2.27 px) | 22.77 dB | 0.0145 |

  Consistent SR is closer to the true views in depth agreement (0.965 vs 0.870; truth 0.998)
  and TSED; its views agree in colour better than the true ones do (29.3 vs 26.8 dB: the pinned
  pixels, 67 % of views 1-26, are the warped earlier SR views themselves, 0.013 from them against
  0.031 for independent SR). Both beat bilinear upsampling against the truth.
  """
  truth, views = bench.true_views(VIEWSET_SCENES, cameras.viewset_poses('3x9'), 32)
  views = np.broadcast_to(views, (VIEWSET_SCENES,) + views.shape)
  low, up = bench.low_and_bilinear(truth, 16)
  s = bench.sample_config(shipped_sr, sr_steps=10, mode='independent', start=0.15)
  figures, results = {'truth': truth, 'bilinear': up}, {}
  for mode in ('independent', 'consistent'):
    s.sr_mode = mode
    sampler, _ = superres.build(s, ml_collections.ConfigDict({'shape': (-1, 1)}))
    results[mode], _ = superres.super_resolve(
        sampler, low, views, seed=0, instance_ids=np.arange(VIEWSET_SCENES),
        labels=np.full(VIEWSET_SCENES, -1, np.int32), batch_size=VIEWSET_SCENES)
    figures[mode] = results[mode].rgbd
  score = {k: bench.pair_consistency(v, views, s, NEIGHBOURS) for k, v in figures.items()}
  tsed = {k: bench.view_set_tsed(v, views, s) for k, v in figures.items()}
  quality = {k: sr_eval.sr_error(v, truth, near=bench.NEAR, far=bench.FAR)
             for k, v in figures.items() if k != 'truth'}
  con = results['consistent']
  pinned = con.cond_mask_rgb[:, 1:, ..., 0] > 0
  pin_err = {k: float(np.abs(r.rgbd[:, 1:, ..., :3] - con.cond_rgbd[:, 1:, ..., :3])[pinned].mean())
             for k, r in results.items()}
  print(json.dumps(dict(score=score, tsed=tsed, quality=quality, pin_err=pin_err,
                        pinned=float(pinned.mean()))))

  # Consistency: consistent SR measurably closer to the true views' than independent SR.
  gap = lambda figures, mode, key: abs(figures[mode][key] - figures['truth'][key])
  assert gap(score, 'consistent', 'depth_agreement') < gap(score, 'independent',
                                                           'depth_agreement') - 0.05
  assert gap(tsed, 'consistent', 'median_sed') < gap(tsed, 'independent', 'median_sed')
  assert tsed['consistent']['tsed'] > tsed['independent']['tsed']
  # The pinned pixels follow the warped earlier SR views, so colour agrees at least as well as
  # between the true views.
  assert pinned.mean() > 0.4 and pin_err['consistent'] < 0.6 * pin_err['independent']
  assert score['consistent']['psnr'] > score['truth']['psnr']
  # Against the truth, both modes beat bilinear upsampling.
  for mode in ('independent', 'consistent'):
    assert quality[mode]['psnr'] > quality['bilinear']['psnr'] + 0.4
    assert quality[mode]['zbuf_mae'] < quality['bilinear']['zbuf_mae']
