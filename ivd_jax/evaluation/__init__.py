"""FID / IS / KID and 3D-consistency metrics."""
