"""The pipeline stages, one file each. Stages never touch the store: bytes and images in, images out."""
