"""IBM Cloud Object Storage through ibm_boto3 (ibm-cos-sdk): an ``S3Store`` with an IBM client.

ibm_boto3 is a fork of an older boto3 whose service model lacks the conditional-write parameters:
its PutObject accepts neither ``IfNoneMatch`` nor ``IfMatch``, and its DeleteObject no ``IfMatch``
(checked against ibm-cos-sdk 2.16; passing them fails parameter validation). The conditions
therefore travel as raw HTTP headers (``S3Store(conditional_via_headers=True)``), which COS honours.
"""

from __future__ import annotations

import os

import ibm_boto3
import ibm_botocore.config
import ibm_botocore.exceptions
import requests

from processor.config import StoreSettings
from processor.errors import ConfigError, StoreAccessError
from processor.redact import redact, split_endpoint
from processor.store.retry import RetryPolicy
from processor.store.s3 import ENDPOINT_CREDENTIAL_SOURCE, S3Store, client_config

#: The standard variables that hold HMAC keys (COS "service credentials" with HMAC enabled).
HMAC_KEY_ENV = "AWS_ACCESS_KEY_ID"
HMAC_SECRET_ENV = "AWS_SECRET_ACCESS_KEY"


class CosStore(S3Store):
    """``S3Store`` over an ibm_boto3 client: IAM API key (OAuth tokens) or HMAC keys (SigV4)."""

    vendor_exceptions = ibm_botocore.exceptions
    # The IAM token endpoint is reached through requests, outside botocore's error types.
    extra_transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> CosStore:
        """The API key from ``$<store.api_key_env>``, else HMAC keys from the standard AWS variables."""
        if not settings.bucket or not settings.endpoint_url:
            raise ConfigError("store.bucket and store.endpoint_url are required for an IBM COS store")
        session = ibm_boto3.session.Session()
        # Keys in the URL (HMAC ``key:secret@``) never reach the client, whose errors quote the URL.
        endpoint_url, url_keys = split_endpoint(settings.endpoint_url)
        api_key = os.environ.get(settings.api_key_env)
        if url_keys is not None:
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=settings.region,
                aws_access_key_id=url_keys.access_key,
                aws_secret_access_key=url_keys.secret_key,
                config=client_config(settings, ibm_botocore.config.Config, signature_version="s3v4"),
            )
            source = ENDPOINT_CREDENTIAL_SOURCE
        elif api_key:
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=settings.region,
                ibm_api_key_id=api_key,
                ibm_service_instance_id=settings.instance_id,
                ibm_auth_endpoint=settings.auth_endpoint,
                config=client_config(settings, ibm_botocore.config.Config, signature_version="oauth"),
            )
            source = f"IAM API key from ${settings.api_key_env}"
        elif os.environ.get(HMAC_KEY_ENV) and os.environ.get(HMAC_SECRET_ENV):
            client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=settings.region,
                aws_access_key_id=os.environ[HMAC_KEY_ENV],
                aws_secret_access_key=os.environ[HMAC_SECRET_ENV],
                config=client_config(settings, ibm_botocore.config.Config, signature_version="s3v4"),
            )
            source = f"HMAC keys from ${HMAC_KEY_ENV}/${HMAC_SECRET_ENV}"
        else:
            raise StoreAccessError(
                f"IBM COS at {endpoint_url}: no credentials. Set ${settings.api_key_env} to an IAM "
                f"API key (store.api_key_env names the variable), or ${HMAC_KEY_ENV} and "
                f"${HMAC_SECRET_ENV} to HMAC keys."
            )
        return cls(
            client,
            settings.bucket,
            description=redact(f"cos://{settings.bucket} at {client.meta.endpoint_url}"),
            retry_policy=RetryPolicy.from_settings(settings),
            conditional_via_headers=True,
            credential_source=source,
        )
