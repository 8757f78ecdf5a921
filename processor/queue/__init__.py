"""The bucket as a job queue: the protocol (``protocol.BucketQueue``), claims, scans, the key
layout, outcomes, the failure policy, requeueing and the rescan hint."""
