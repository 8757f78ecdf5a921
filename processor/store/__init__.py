"""Object stores behind one small Protocol (see ``base.ObjectStore``).

Only this package imports boto3 / ibm_boto3; everything above it sees ``ObjectStore`` and the
error types of ``processor.errors``.
"""

from processor.store.base import ObjectInfo, ObjectStore, StoredObject

__all__ = ["ObjectInfo", "ObjectStore", "StoredObject"]
