"""Conversion of the authors' PyTorch ADM state dict: the fixture network reproduced exactly."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ivd_jax import checkpoint
from ivd_jax.errors import UserError
from ivd_jax.models import unet as unet_lib
from ivd_jax.tools import convert_reference

TOL = 1e-4  # Issue 3: output and every intermediate within 1e-4 absolute.


@pytest.fixture(scope='module')
def reference(fixtures_dir):
  arrays = np.load(fixtures_dir / 'adm_small_uncond.npz')
  meta = json.loads((fixtures_dir / 'adm_small_uncond.json').read_text())
  state_dict = {k[len('param/'):]: arrays[k] for k in arrays.files if k.startswith('param/')}
  model, params = convert_reference.from_state_dict(state_dict, meta['constructor_kwargs'])
  x = jnp.asarray(arrays['input/x'].transpose(0, 2, 3, 1))  # NCHW -> NHWC.
  t = jnp.asarray(arrays['input/t'])
  out, state = jax.jit(lambda p: model.apply({'params': p}, x, t, capture_intermediates=True))(
      params)
  return dict(arrays=arrays, meta=meta, state_dict=state_dict, model=model, params=params, x=x,
              t=t, out=out, intermediates=state['intermediates'])


def _block_output(intermediates, name):
  """Output of reference module `name` (e.g. input_blocks.3): its last sub-layer's output."""
  prefix = name.replace('.', '_') + '_'
  subs = sorted((k for k in intermediates if k.startswith(prefix) and k[len(prefix):].isdigit()),
                key=lambda k: int(k[len(prefix):]))
  return intermediates[subs[-1]]['__call__'][0]


def test_fixture_output_and_intermediates(reference):
  arrays, inter = reference['arrays'], reference['intermediates']
  assert reference['model'].image_size == 32
  count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(reference['params']))
  assert count == reference['meta']['total_params'] == 1_421_988
  out = np.asarray(reference['out']).transpose(0, 3, 1, 2)
  assert np.abs(out - arrays['output']).max() < TOL
  names = [k[len('intermediate/'):] for k in arrays.files if k.startswith('intermediate/')]
  assert len(names) == 1 + 6 + 1 + 6
  for name in names:
    ref = arrays[f'intermediate/{name}']
    if name == 'time_embed':
      got = np.asarray(inter['time_embed_fc2']['__call__'][0])
    else:
      got = np.asarray(_block_output(inter, name))[:1].transpose(0, 3, 1, 2)
    assert got.shape == ref.shape, name
    assert np.abs(got - ref).max() < TOL, name


def test_name_map():
  assert convert_reference.flax_name('input_blocks.3.1.qkv.weight') == 'input_blocks_3_1/qkv/kernel'
  assert convert_reference.flax_name('output_blocks.1.2.in_layers.0.weight') == (
      'output_blocks_1_2/in_norm/gn/scale')
  assert convert_reference.flax_name('out.0.bias') == 'out_norm/gn/bias'
  assert convert_reference.flax_name('label_emb.weight') == 'label_emb/embedding'
  assert convert_reference.flax_name('time_embed.0.freqs') is None
  with pytest.raises(UserError, match='unexpected'):
    convert_reference.flax_name('decoder.weight')


def test_state_dict_mismatch_is_reported(reference):
  kwargs = reference['meta']['constructor_kwargs']
  missing = dict(reference['state_dict'])
  del missing['middle_block.1.qkv.bias']
  with pytest.raises(UserError, match='middle_block_1/qkv/bias'):
    convert_reference.from_state_dict(missing, kwargs)
  with pytest.raises(UserError, match='shape'):
    convert_reference.from_state_dict(reference['state_dict'], dict(kwargs, model_channels=64))
  with pytest.raises(UserError, match='resblock_updown'):
    convert_reference.unet_from_kwargs(dict(kwargs, resblock_updown=False))


def test_widen_to_conditional_keeps_the_function(reference):
  params, model, x = reference['params'], reference['model'], reference['x']
  wide = unet_lib.widen_input(params, 10)
  kernel = wide['input_blocks_0_0']['kernel']
  assert kernel.shape == (3, 3, 10, 32)
  np.testing.assert_array_equal(kernel[:, :, :4], params['input_blocks_0_0']['kernel'])
  np.testing.assert_array_equal(kernel[:, :, 4:], 0.0)
  g_c = model.clone(in_channels=10)
  extra = jax.random.normal(jax.random.PRNGKey(0), x.shape[:3] + (6,))
  out = jax.jit(lambda p, v: g_c.apply({'params': p}, v, reference['t']))(
      wide, jnp.concatenate([x, extra], axis=-1))
  np.testing.assert_allclose(out, reference['out'], atol=1e-5)


def test_cli_writes_a_params_checkpoint(reference, fixtures_dir, tmp_path):
  torch = pytest.importorskip('torch')
  pt = tmp_path / 'ema.pt'
  torch.save({'module.' + k: torch.from_numpy(np.array(v))
              for k, v in reference['state_dict'].items()}, pt)
  config = tmp_path / 'config.json'
  config.write_text(json.dumps({'backbone': {'args': reference['meta']['constructor_kwargs']}}))
  out = tmp_path / 'export'
  assert convert_reference.main(['--checkpoint', str(pt), '--config', str(config),
                                 '--out', str(out)]) == 0
  params, saved = checkpoint.load_params(str(out))
  from ivd_jax.models.unet import unet_from_config  # pylint: disable=g-import-not-at-top
  model = unet_from_config(saved['model'])
  assert model == reference['model']
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(reference['params'])):
    np.testing.assert_array_equal(a, b)
  # The fixture .npz converts without torch; --widen_to exports a G_c initialisation.
  wide = tmp_path / 'wide'
  assert convert_reference.main(['--checkpoint', str(fixtures_dir / 'adm_small_uncond.npz'),
                                 '--config', str(fixtures_dir / 'adm_small_uncond.json'),
                                 '--out', str(wide), '--widen_to', '10']) == 0
  params, saved = checkpoint.load_params(str(wide))
  assert unet_from_config(saved['model']) == reference['model'].clone(in_channels=10)
  np.testing.assert_array_equal(params['input_blocks_0_0']['kernel'][:, :, 4:], 0.0)
  with pytest.raises(UserError, match='does not exist'):
    convert_reference.main(['--checkpoint', str(tmp_path / 'missing.pt'), '--config',
                            str(config), '--out', str(out)])
