"""Toy cartoonizer: an object-storage-driven batch processor (see README.md)."""

#: The one place the version is written (SemVer, see CHANGELOG.md): pyproject.toml's metadata,
#: ``processor --version``, manifests and scripts/release.sh all read it from here.
__version__ = "0.1.0"
