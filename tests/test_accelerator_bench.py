"""benchmarks/accelerator.py and benchmarks/fit.py at tiny shapes, and the UNet's speed switches.

Every benchmark case runs on the CPU (shapes and keys, never a time); the FLOP count the
benchmark reports equals a hand count; the fit plan's per-device bytes fall as fsdp grows; the
remat policies change no gradient.
"""
import io
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # benchmarks/
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import accelerator
from benchmarks import fit
from ivd_jax.errors import FieldError
from ivd_jax.models.unet import UNet, unet_from_config
# pylint: enable=g-import-not-at-top,wrong-import-position


def test_flops_equal_a_hand_count_of_two_convolutions():
  b, h, w, c0, c1, c2 = 2, 10, 10, 3, 8, 5
  dn = ('NHWC', 'HWIO', 'NHWC')

  def net(w1, w2, x):  # two 3x3 'VALID' convolutions, nothing else
    y = jax.lax.conv_general_dilated(x, w1, (1, 1), 'VALID', dimension_numbers=dn)
    return jax.lax.conv_general_dilated(y, w2, (1, 1), 'VALID', dimension_numbers=dn)

  rng = np.random.default_rng(0)
  args = (rng.standard_normal((3, 3, c0, c1), np.float32),
          rng.standard_normal((3, 3, c1, c2), np.float32),
          rng.standard_normal((b, h, w, c0), np.float32))
  # A multiply and an add per kernel tap, input channel and output element.
  hand = 2 * (b * 8 * 8 * c1) * (3 * 3 * c0) + 2 * (b * 6 * 6 * c2) * (3 * 3 * c1)
  lowered = jax.jit(net).lower(*args)
  compiled, row = accelerator.compile_and_measure(lowered)
  assert row['flops_per_step'] == hand == 107_136
  assert accelerator.lowered_flops(lowered, num_devices=1) == hand
  assert row['argument_bytes'] == 4 * sum(a.size for a in args)
  assert row['output_bytes'] == 4 * b * 6 * 6 * c2
  assert row['peak_bytes'] >= row['argument_bytes'] + row['output_bytes']
  assert compiled(*args).shape == (b, 6, 6, c2)


def test_peak_table_by_device_kind():
  peak = accelerator.peak_tflops
  assert peak('NVIDIA H200', 'bfloat16') == 989.5
  assert peak('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.5
  assert peak('NVIDIA H100 PCIe', 'bfloat16') == 756.5
  assert peak('NVIDIA A100-SXM4-40GB', 'bfloat16') == 312.0
  assert peak('NVIDIA A100-SXM4-40GB', 'float32') == 156.0
  assert peak('Tesla V100-SXM2-32GB', 'bfloat16') == 15.7
  assert peak('TPU v4', 'bfloat16') == 275.0
  assert peak('TPU v5 lite', 'bfloat16') == 197.0
  assert peak('TPU v5', 'bfloat16') == 459.0
  assert peak('TPU v5p', 'bfloat16') == 459.0
  assert peak('cpu', 'bfloat16') is None


def test_every_case_runs_at_tiny_shapes():
  out = io.StringIO()
  rows = accelerator.main(['--size=tiny', '--devices=1'], out=out)
  assert [json.loads(line) for line in out.getvalue().splitlines()] == rows
  by = {r['case']: r for r in rows}
  assert list(by) == list(accelerator.CASES)
  assert not [r for r in rows if 'error' in r], [r['error'] for r in rows if 'error' in r]
  assert 'skipped' in by['train_gu_xla_attention']  # 'auto' is already 'xla' on a CPU
  for name in accelerator.TRAIN_CASES:
    if name == 'train_gu_xla_attention':
      continue
    r = by[name]
    assert r['backend'] == 'cpu' and r['num_devices'] == 1
    assert r['role'] == ('cond' if name == 'train_gc' else 'uncond')
    assert r['params'] > 0 and r['flops_per_step'] > 0 and r['model_flops_per_step'] > 0
    assert r['peak_bytes'] == (r['argument_bytes'] + r['output_bytes'] - r['alias_bytes'] +
                               r['temp_bytes'])
    assert r['alias_bytes'] > 0  # the state is donated
    assert r['mfu'] is None and r['peak_tflops'] is None  # no peak for a CPU
    for key in ('s_per_step', 's_per_step_host_input', 'images_per_s', 'compile_s'):
      assert r[key] > 0
  gu, gc = by['train_gu'], by['train_gc']
  assert (gu['global_batch'], gu['dtype'], gu['remat'], gu['attention']) == (
      2, 'bfloat16', 'none', 'xla')
  assert gc['params'] > gu['params']  # 10 input channels
  assert by['train_gu_f32']['dtype'] == 'float32'
  # Model FLOPs do not depend on remat and grow with the batch (the optimizer's do not).
  assert by['train_gu_dots']['model_flops_per_step'] == gu['model_flops_per_step']
  ratio = by['train_gu_dots_2x']['model_flops_per_step'] / gu['model_flops_per_step']
  assert 1.9 < ratio <= 2.0
  full = by['train_gu_full_4x']
  assert full['global_batch'] == 8 and full['remat'] == 'full'
  assert full['flops_per_step'] > 1.2 * full['model_flops_per_step']  # the forward runs twice
  s = by['sample']
  assert s['instances'] == 2 and s['guidance'] == 3.0
  for key in ('gu_step_s', 'aggregate_27_slots_s', 'view_set_s_per_instance',
              'gu_flops_per_step', 'gu_peak_bytes', 'gc_peak_bytes'):
    assert s[key] > 0, key
  # A difference of two timings (the view step minus its aggregation), 0 when noise makes it < 0.
  assert s['gc_ddim_step_s'] >= 0
  assert s['view_set_s'] == pytest.approx(
      1000 * s['gu_step_s'] + 26 * s['further_view_s'], rel=0.01)
  f = by['fid']
  assert (f['images'], f['feature_dim'], f['precision']) == (8, 2048, 'highest')
  assert f['images_per_s'] > 0 and f['flops_per_image'] > 5e9  # Inception-v3 at 299 px


def test_budget_skips_cases():
  # train_gu is compiled already (the persistent compilation cache of tests/conftest.py).
  rows = accelerator.main(['--size=tiny', '--devices=1', '--cases=train_gu,fid',
                           '--budget_s=0.001'], out=io.StringIO())
  assert 'skipped' not in rows[0] and rows[1]['skipped'].startswith('time budget')


def test_fit_bytes_fall_as_fsdp_grows(tmp_path):
  out = io.StringIO()
  args = ['--size=tiny', '--targets=cpu-8', '--fsdp=1,2,8', '--markdown',
          f'--records={tmp_path / "records.jsonl"}']
  rows = fit.main(args, out=out)
  assert [r['fsdp'] for r in rows] == [1, 2, 8]
  for small, large in zip(rows, rows[1:]):
    for key in ('params_bytes', 'optimizer_bytes', 'peak_bytes'):
      assert large[key] < small[key], key
  for r in rows:
    assert r['devices'] == 8 and r['mesh'] == [8 // r['fsdp'], r['fsdp']]
    assert r['fits_recipe'] and r['largest_batch_per_device'] > r['recipe_batch_per_device']
    # AdamW's two moments weigh what the parameters and their EMA weigh.
    assert r['optimizer_bytes'] == pytest.approx(r['params_bytes'], rel=0.01)
    assert r['activation_bytes'] > 0
  checked = [r for r in rows if 'check_batch_per_device' in r]
  assert len(checked) == 1 and checked[0]['check_fits']
  # The linear extrapolation of the temporaries holds at the largest batch.
  assert checked[0]['check_peak_bytes'] == pytest.approx(
      checked[0]['check_predicted_peak_bytes'], rel=0.1)
  assert '| cpu-8 | 8 |' in out.getvalue()
  # A rerun takes every compilation from the records and plans the same.
  again = io.StringIO()
  assert fit.main(args, out=again) == rows
  compiles = [json.loads(l) for l in again.getvalue().splitlines() if l.startswith('{')]
  compiles = [c for c in compiles if c['kind'] in ('compile', 'check')]
  assert compiles and all(c.get('recorded') for c in compiles)


@pytest.mark.parametrize('policy', ['dots', 'full'])
def test_remat_policies_give_the_same_gradients(policy):
  config = dict(accelerator.TINY_MODEL, in_channels=4)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  t, y = np.array([5, 700]), np.array([3, -1])
  plain, remat = UNet(**config), UNet(**dict(config, remat=policy))
  params = accelerator.random_params(plain.init, x, t, y)['params']

  def loss(model, p):
    return jnp.mean(model.apply({'params': p}, x, t, y) ** 2)

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  v0, g0 = grad(plain, params)
  v1, g1 = grad(remat, params)
  assert float(v0) > 1e-3 and float(v0) == pytest.approx(float(v1), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_speed_fields_from_config():
  base = dict(accelerator.TINY_MODEL)
  assert unet_from_config(dict(base, remat='none')) == unet_from_config(dict(base, remat=False))
  assert unet_from_config(dict(base, remat='full')).remat is True
  assert unet_from_config(dict(base, remat='dots')).remat_policy == 'dots'
  assert unet_from_config(dict(base, attention='cudnn')).attention == 'cudnn'
  for field, value in (('remat', 'sometimes'), ('attention', 'flash')):
    with pytest.raises(FieldError, match=f'^{field}:'):
      unet_from_config(dict(base, **{field: value}))
