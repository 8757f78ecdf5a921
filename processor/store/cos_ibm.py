"""IBM COS through ibm_boto3 (ibm-cos-sdk, the ``cos`` extra): what an IAM API key needs.

ibm_boto3 is a fork of an older boto3 whose service model lacks the conditional-write parameters:
its PutObject accepts neither ``IfNoneMatch`` nor ``IfMatch``, and its DeleteObject no ``IfMatch``
(checked against ibm-cos-sdk 2.16; passing them fails parameter validation). The conditions
therefore travel as raw HTTP headers (``S3Store(conditional_via_headers=True)``), which COS honours.

``CosStore.from_settings`` builds this store for an API key; ``with_hmac_keys`` exists too, because
a server without IBM IAM (the S3 server the contract tests start) can only check this adapter's
requests, conditions and error translation when it signs with HMAC keys.
"""

from __future__ import annotations

from typing import Any

import ibm_boto3
import ibm_botocore.config
import ibm_botocore.exceptions
import requests

from processor.config import StoreSettings
from processor.redact import redact
from processor.store.cos import CosStore
from processor.store.retry import RetryPolicy
from processor.store.s3 import client_config


class IbmCosStore(CosStore):
    """``CosStore`` over an ibm_boto3 client: IAM API key (OAuth tokens), or HMAC keys (SigV4)."""

    vendor_exceptions = ibm_botocore.exceptions
    # The IAM token endpoint is reached through requests, outside botocore's error types.
    extra_transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

    @classmethod
    def with_api_key(cls, settings: StoreSettings, endpoint_url: str | None, api_key: str) -> IbmCosStore:
        """A store whose client trades ``api_key`` for IAM tokens at ``store.auth_endpoint`` (on first use)."""
        client = ibm_boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.region,
            ibm_api_key_id=api_key,
            ibm_service_instance_id=settings.instance_id,
            ibm_auth_endpoint=settings.auth_endpoint,
            config=client_config(settings, ibm_botocore.config.Config, signature_version="oauth"),
        )
        return cls._over(client, settings, f"IAM API key from ${settings.api_key_env}")

    @classmethod
    def with_hmac_keys(cls, settings: StoreSettings, endpoint_url: str | None, access_key: str, secret_key: str,
                       *, source: str) -> IbmCosStore:
        client = ibm_boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=client_config(settings, ibm_botocore.config.Config, signature_version="s3v4"),
        )
        return cls._over(client, settings, source)

    @classmethod
    def _over(cls, client: Any, settings: StoreSettings, source: str) -> IbmCosStore:
        return cls(
            client,
            settings.bucket or "",
            description=redact(f"cos://{settings.bucket} at {client.meta.endpoint_url}"),
            retry_policy=RetryPolicy.from_settings(settings),
            conditional_via_headers=True,
            credential_source=source,
        )
