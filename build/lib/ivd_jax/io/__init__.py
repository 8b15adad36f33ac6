"""Host-side files: pictures, videos, point clouds, JSON, npz, image+depth ingestion, and the
paths they live at (local or gs://, `paths`)."""
