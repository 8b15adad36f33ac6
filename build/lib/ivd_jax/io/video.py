"""Videos: GIF and MP4 writing and reading back (local paths or gs://)."""
import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np

from ivd_jax.io import images
from ivd_jax.io import paths


def save_video(path_stem: str, frames: np.ndarray, fps: float = 15.0) -> dict[str, str]:
  """Writes frames [T, H, W, 3] (uint8, or floats in [0, 1]) as `<stem>.gif` and `<stem>.mp4`.

  The MP4 is H.264 / yuv420p (plays everywhere), so frames are padded to even sizes. ffmpeg
  writes a local file, which is then moved (or uploaded) to `<stem>.mp4`.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    frames = images.to_uint8(frames)
  gif = path_stem + '.gif'
  # Pillow's GIF writer takes the frame duration in milliseconds; loop=0 repeats forever.
  paths.write_bytes(gif, iio.imwrite('<bytes>', frames, extension='.gif',
                                     duration=1000.0 / fps, loop=0))
  _, h, w, _ = frames.shape
  even = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  mp4 = path_stem + '.mp4'
  with paths.local_target(mp4) as local:
    with imageio_v2.get_writer(local, format='FFMPEG', mode='I', fps=fps, codec='libx264',
                               pixelformat='yuv420p', macro_block_size=1, quality=8) as writer:
      for frame in even:
        writer.append_data(frame)
  return {'gif': gif, 'mp4': mp4}


def read_frames(path: str) -> np.ndarray:
  """Reads every frame of a GIF/MP4 back as uint8 [T, H, W, 3] (used by tests and notebooks)."""
  if path.endswith('.mp4'):
    with paths.local_copy(path) as local:
      with imageio_v2.get_reader(local, format='FFMPEG') as reader:
        return np.stack([np.asarray(f)[..., :3] for f in reader])
  frames = iio.imread(paths.read_bytes(path), index=None, extension='.gif')
  return np.asarray(frames)[..., :3]
