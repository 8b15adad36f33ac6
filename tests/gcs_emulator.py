"""The GCS emulator of tests/test_buckets.py: gcp-storage-emulator plus what TensorStore reads.

  python tests/gcs_emulator.py PORT BUCKET      # serves http://127.0.0.1:PORT until killed

gcp-storage-emulator (a stub of the JSON API) serves object downloads without the
`x-goog-generation` header and ignores the `ifGenerationMatch` / `ifGenerationNotMatch`
conditions of a read. TensorStore's gcs driver (orbax's arrays, OCDBT manifests) needs both: it
stamps every read with the header's generation and re-reads a manifest only if it changed. GCS
itself does both; this wrapper adds them to the emulator's download handler (304 when the
generation matches ifGenerationNotMatch, 412 when it differs from ifGenerationMatch) and starts
the emulator in memory with one bucket. Nothing else changes.
"""
import http
import logging
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  """objects.download with the generation header and the read preconditions of GCS."""
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
  except NotFound:
    return _download(request, response, storage, *args, **kwargs)  # its 404
  generation = str(obj.get('generation'))
  response['x-goog-generation'] = generation
  response['x-goog-metageneration'] = str(obj.get('metageneration', 1))
  not_match = request.query.get('ifGenerationNotMatch')
  match = request.query.get('ifGenerationMatch')
  if not_match and not_match[0] == generation:
    response.status = http.HTTPStatus.NOT_MODIFIED
    return None
  if match and match[0] != generation:
    response.status = http.HTTPStatus.PRECONDITION_FAILED
    return None
  return _download(request, response, storage, *args, **kwargs)


# objects.get calls the module's `download`; the server's route table is built at its import.
objects.download = download
from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(port: int, bucket: str) -> None:
  logging.basicConfig(level=logging.WARNING)
  server.create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket).run()


if __name__ == '__main__':
  main(int(sys.argv[1]), sys.argv[2])
