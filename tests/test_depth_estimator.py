"""The depth estimator hook: processor and end-to-end parity with transformers, sharding, scale."""
import os

import numpy as np
import pytest
import skimage.data
import skimage.transform
import jax

from ivd_jax import errors
from ivd_jax.models import depth_estimator as de
from ivd_jax.models import dpt
from ivd_jax.io import ingest

torch = pytest.importorskip('torch', reason='torch is needed for the PyTorch cross-check')
transformers = pytest.importorskip('transformers', reason='transformers is needed')

# A small processor so the tiny model runs on CPU quickly (same rules as the published 518 / x14).
SMALL_DA = de.Preprocessing(size=(70, 70), ensure_multiple_of=14, mean=de.IMAGENET_MEAN,
                            std=de.IMAGENET_STD)


def _hf_processor(pre):
  return transformers.DPTImageProcessor(
      size={'height': pre.size[0], 'width': pre.size[1]}, keep_aspect_ratio=pre.keep_aspect_ratio,
      ensure_multiple_of=pre.ensure_multiple_of, image_mean=list(pre.mean),
      image_std=list(pre.std), resample=3)


def photos(height=60, width=90):
  """Real photographs (skimage.data), resized to one shape like prepare's batches."""
  out = []
  for name in ('coffee', 'chelsea', 'astronaut'):
    img = getattr(skimage.data, name)()
    img = skimage.transform.resize(img, (height, width), order=1, anti_aliasing=True)
    out.append(np.round(img * 255).astype(np.uint8))
  return np.stack(out)


def tiny_depth_anything():
  backbone = transformers.Dinov2Config(
      image_size=28, patch_size=14, num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
      out_indices=[1, 2, 3, 4], apply_layernorm=True, reshape_hidden_states=False)
  config = transformers.DepthAnythingConfig(
      backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
      fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
  model = transformers.DepthAnythingForDepthEstimation(config).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    # Random values everywhere give a strongly varying output (HF's init is nearly constant);
    # the head bias lifts 70-95% of it above the final ReLU on the test photographs (the rest is
    # 'sky', exactly zero).
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.2
      p.copy_(1.0 + noise if 'norm' in name and name.endswith('weight') else noise)
    model.head.conv3.bias.fill_(200.0)
  return model


@pytest.fixture(scope='module')
def da_model():
  return tiny_depth_anything()


@pytest.fixture(scope='module')
def checkpoint_dir(tmp_path_factory, da_model):
  """The tiny model as a transformers checkpoint folder (config, safetensors, processor)."""
  ckpt = tmp_path_factory.mktemp('ckpt')
  da_model.save_pretrained(ckpt)
  _hf_processor(SMALL_DA).save_pretrained(ckpt)
  return str(ckpt)


@pytest.fixture(scope='module')
def weights(tmp_path_factory, checkpoint_dir):
  """The tiny model converted through the CLI's function (checkpoint folder -> .npz)."""
  from ivd_jax.tools import convert_depth  # pylint: disable=g-import-not-at-top
  path = str(tmp_path_factory.mktemp('w') / 'tiny_da.npz')
  convert_depth.convert_checkpoint(checkpoint_dir, path)
  return path


@pytest.fixture(scope='module')
def raw_estimator(weights):
  return de.estimator(weights=weights, normalization='none', batch_size=4)


@pytest.mark.parametrize('pre', [
    de.Preprocessing(size=(126, 126), ensure_multiple_of=14, mean=de.IMAGENET_MEAN,
                     std=de.IMAGENET_STD),
    de.Preprocessing(size=(128, 128), ensure_multiple_of=32)], ids=['depth_anything', 'beit'])
def test_preprocess_matches_image_processor(pre):
  img = skimage.data.coffee()[::4, ::4]  # 100 x 150: the width is the smaller change
  ref = _hf_processor(pre)(images=img, return_tensors='np')['pixel_values'][0].transpose(1, 2, 0)
  out = np.asarray(jax.jit(de.preprocess, static_argnums=1)(img[None], pre))[0]
  assert out.shape == ref.shape == {14: (84, 126, 3), 32: (96, 128, 3)}[pre.ensure_multiple_of]
  levels = np.abs(out - ref) * np.asarray(pre.std) * 255  # in uint8 grey levels
  # Pillow's fixed-point weights round a few pixels the other way; never by more than 1 level.
  assert levels.max() < 1.01
  assert (levels > 0.5).mean() < 0.01


def test_network_input_size_follows_processor_rules():
  pre = de.Preprocessing(size=(518, 518), ensure_multiple_of=14)
  assert de.network_input_size(400, 600, pre) == (350, 518)  # width closer to 518: fit it
  assert de.network_input_size(128, 128, pre) == (518, 518)
  assert de.network_input_size(1000, 500, pre) == (1036, 518)
  beit = de.Preprocessing(size=(512, 512), ensure_multiple_of=32)
  assert de.network_input_size(480, 640, beit) == (512, 672)


def test_estimator_matches_transformers_pipeline(da_model, raw_estimator):
  """Processor -> model -> bicubic resize to the image, against transformers end to end."""
  images = photos()
  proc = _hf_processor(SMALL_DA)
  inputs = proc(images=list(images), return_tensors='pt')
  with torch.no_grad():
    outputs = da_model(**inputs)
  post = proc.post_process_depth_estimation(outputs, target_sizes=[images.shape[1:3]] * 3)
  ref = np.stack([p['predicted_depth'].numpy() for p in post])
  scale = np.abs(ref).max()
  # Network + output resize on the processor's own pixels: exact.
  config, params, _ = de.load_depth_model(raw_estimator.weights)
  pixels = inputs['pixel_values'].numpy().transpose(0, 2, 3, 1)
  d = jax.jit(dpt.DPT(config).apply)({'params': params}, pixels)
  d = dpt.torch_interpolate(d[..., None], (60, 90), mode='bicubic', align_corners=False)[..., 0]
  assert np.abs(np.asarray(d) - ref).max() / scale < 1e-4
  # The whole estimator: only the processor's rare 1-level uint8 rounding differences remain
  # (~0.5% of pixels), which this deliberately chaotic random network amplifies a little.
  out = raw_estimator(images)
  assert out.shape == (3, 60, 90) and out.dtype == np.float32
  rel = np.abs(out - ref) / scale
  assert rel.mean() < 2e-3 and rel.max() < 2e-2


def test_batches_are_padded_and_sharded(raw_estimator):
  images = photos()
  assert raw_estimator.batch_size == 8  # rounded up to the 8 simulated devices
  one_by_one = np.concatenate([raw_estimator(images[i:i + 1]) for i in range(3)])
  np.testing.assert_allclose(raw_estimator(images), one_by_one, rtol=1e-5, atol=1e-5)
  fn = raw_estimator._fn(60, 90)  # pylint: disable=protected-access
  x = raw_estimator._batch_sharding  # pylint: disable=protected-access
  assert len(x.device_set) == 8 and x.spec == de.P(tuple(raw_estimator.mesh.axis_names))
  assert fn is raw_estimator._fn(60, 90)  # pylint: disable=protected-access


def test_median_normalization_puts_median_at_reference_depth_1(weights, raw_estimator):
  images = photos()
  est = de.estimator(weights=weights)  # 'auto' -> 'median' for Depth Anything
  assert est.normalization == 'median'
  out = est(images)
  raw = raw_estimator(images)
  for o, r in zip(out, raw):
    assert (r <= 0).mean() > 0.01  # some 'sky': excluded from the median, kept at zero
    np.testing.assert_allclose(np.median(o[o > 0]), 6250.0, rtol=1e-4)
    factor = np.median(o[r > 0] / r[r > 0])
    np.testing.assert_allclose(o, factor * r, rtol=1e-4, atol=1e-3 * factor)  # scale, no shift
  assert np.isfinite(out).all()


def test_fit_scale_recovers_a_global_factor():
  rng = np.random.default_rng(0)
  d = [rng.uniform(0.5, 20, size=(8, 8)) for _ in range(5)]
  assert de.fit_scale(d, [3.5 * x for x in d]) == pytest.approx(3.5)


def test_bad_inputs_are_user_errors(weights, tmp_path):
  with pytest.raises(errors.FieldError, match='weights'):
    de.estimator()
  with pytest.raises(errors.UserError, match='not found'):
    de.estimator(weights=str(tmp_path / 'missing.npz'))
  with pytest.raises(errors.FieldError, match='normalization'):
    de.estimator(weights=weights, normalization='minmax')
  est = de.estimator(weights=weights, batch_size=1)
  with pytest.raises(errors.UserError, match='uint8'):
    est(np.zeros((1, 8, 8, 3), np.float32))


def test_converted_checkpoint_verifies_against_transformers(checkpoint_dir, weights):
  from ivd_jax.tools import convert_depth  # pylint: disable=g-import-not-at-top
  assert convert_depth.verify_against_transformers(checkpoint_dir, weights) < 1e-4


def test_saved_file_round_trips(weights):
  config, params, pre = de.load_depth_model(weights)
  assert pre == SMALL_DA
  assert config.readout == 'ignore' and config.backbone.out_indices == (1, 2, 3, 4)
  shapes = dpt.param_shapes(config)
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert os.path.getsize(weights) > 4 * sum(x.size for x in jax.tree.leaves(params))


def test_prepare_with_estimator_on_photographs(weights, tmp_path):
  """prepare(folder of real photos, depth='estimator') writes finite in-range depth: ours."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from ivd_jax.configs import prepare as prepare_config  # pylint: disable=g-import-not-at-top
  from ivd_jax.data import records  # pylint: disable=g-import-not-at-top
  from ivd_jax.pipelines import prepare  # pylint: disable=g-import-not-at-top
  from ivd_jax.geometry import depth as depth_lib  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'photos'
  folder.mkdir()
  names = {'coffee.jpg': skimage.data.coffee(), 'chelsea.png': skimage.data.chelsea(),
           'rocket.jpg': skimage.data.rocket()}
  for name, array in names.items():
    Image.fromarray(array).save(folder / name)
  config = prepare_config.get_config('folder')
  config.data.folder = str(folder)
  config.data.resolution = 32
  config.data.prepare_workers = 1
  config.data.depth = 'estimator'
  config.data.estimator = 'ivd_jax.models.depth_estimator:estimator'
  config.data.estimator_kwargs = {'weights': weights, 'batch_size': 4}
  config.data.estimator_resolution = 70
  config.data.estimator_batch_size = 4
  config.log.progress = False
  summary = prepare.run(config, str(tmp_path / 'work'))
  assert summary['num_written'] == 3 and summary['num_skipped'] == 0

  source = tfds.builder_from_directory(str(tmp_path / 'work' / 'data')).as_data_source(
      split='train', decoders={'rgb': tfds.decode.SkipDecoding(),
                               'depth': tfds.decode.SkipDecoding()})
  rows = {bytes(ex['file']).decode(): ex for ex in (source[i] for i in range(len(source)))}
  est = de.estimator(weights=weights, batch_size=4)
  for name in names:
    zbuf = ingest.zbuf_from_uint16(records.decode_png(rows[name]['depth']))
    assert zbuf.shape == (32, 32) and np.isfinite(zbuf).all()
    assert 0.0 <= zbuf.min() and zbuf.max() <= 1.0 and zbuf.std() > 0.01
    with Image.open(folder / name) as image:  # the decoded JPEG, as prepare sees it
      crop = ingest.resize_crop_rgb(image.convert('RGB'), 70)
    disp = ingest.resize_crop_depth(est(crop[None])[0], 32)
    want = np.asarray(depth_lib.zbuf_from_midas(disp, 0.5, 100.0))
    np.testing.assert_allclose(zbuf, want, atol=2e-5)  # 16-bit PNG quantisation


def test_bfloat16_compute_stays_close(weights, raw_estimator):
  images = photos()
  ref = raw_estimator(images)
  out = de.estimator(weights=weights, normalization='none', batch_size=4, dtype='bfloat16')(images)
  rel = np.abs(out - ref) / np.abs(ref).max()
  assert np.isfinite(out).all() and rel.mean() < 2e-2
