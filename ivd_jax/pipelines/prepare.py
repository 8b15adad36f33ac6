"""Mode 'prepare': RGBD examples written as a TFDS ArrayRecord dataset.

  python -m ivd_jax.main --config=configs/prepare.py:procedural --workdir=DIR
  python -m ivd_jax.main --config=configs/prepare.py:folder --workdir=DIR \
      --config.data.folder=/data/imagenet/train --config.data.depth=midas

The dataset lands in config.data.dir (default DIR/data); its format is ivd_jax.data.records, the
sources and the sharding ivd_jax.data.prepare. Multi-host jobs run the same command on every
process: each writes its share of the shards, all wait for the others, process 0 writes the
dataset metadata and the summary DIR/prepare_summary.json: num_written, num_skipped, skipped
[{file, reason}], converted [{file, note}], the class list and per-split counts. A rerun resumes:
shards already complete are kept. Prepare fails (a UserError, after the summary is written) when
it writes no example or skips more than data.max_skipped_fraction of the images it found.
"""
import json
from typing import Any, Dict, Optional

from absl import logging
import jax

from ivd_jax import checkpoint as ckpt_lib
from ivd_jax.data import prepare as prepare_lib
from ivd_jax.data import records
from ivd_jax.io import lock as lock_lib
from ivd_jax.io import paths

SUMMARY_FILE = 'prepare_summary.json'


@lock_lib.locks_workdir  # one writer per workdir
def run(config, workdir: str, *, process_index: Optional[int] = None,
        process_count: Optional[int] = None) -> Dict[str, Any]:
  """Prepares the dataset of config.data and writes WORKDIR/prepare_summary.json.

  Args:
    config: a config with the sections data (configs/common.py:data_section) and log (progress).
    workdir: DIR; the summary goes to DIR/prepare_summary.json, the data by default to DIR/data.
    process_index, process_count: which shards this process writes (shard k goes to process
      k % process_count). Default: jax.process_index() / jax.process_count(), i.e. every process
      of a multi-host job runs prepare; pass 0 / 1 when a single process prepares everything.

  Returns:
    The summary dict (written as JSON by process 0).

  Raises:
    errors.UserError: no example written, or too many images skipped (data.prepare.check_summary).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  out = records.data_dir(config, workdir)
  summary = prepare_lib.prepare(config.data, out, process_index=process_index,
                                process_count=process_count,
                                show_progress=bool(config.log.progress))
  path = paths.join(workdir, SUMMARY_FILE)  # local or gs://
  if process_index == 0:
    paths.write_text(path, json.dumps(summary, indent=1))
    logging.info('prepare: wrote %d examples (%d skipped) to %s in %.1f s',
                 summary['num_written'], summary['num_skipped'], summary['data_dir'],
                 summary['seconds'])
    print(f'prepare: {summary["num_written"]} examples written, {summary["num_skipped"]} '
          f'skipped -> {summary["data_dir"]} (summary: {path})')
  if process_count > 1 and process_count == jax.process_count():
    # Process 0 wrote the metadata and the summary: the dataset is complete for every process.
    ckpt_lib.wait_for_all_processes('ivd_jax:prepare')
  prepare_lib.check_summary(summary, path)
  return summary
