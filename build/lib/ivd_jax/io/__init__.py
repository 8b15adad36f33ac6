"""Host-side files: pictures, videos, point clouds, JSON and image+depth ingestion."""
