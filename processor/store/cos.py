"""IBM Cloud Object Storage: an ``S3Store`` over the SDK its credentials need.

HMAC keys (a COS service credential with "Include HMAC Credential" on) sign requests with SigV4,
so plain boto3 talks to COS with them: the core install is enough, and the conditional writes go
as boto3's own ``IfNoneMatch``/``IfMatch`` parameters. An IAM API key needs ibm_boto3
(ibm-cos-sdk, the ``cos`` extra), which trades the key for OAuth tokens and refreshes them; that
adapter is ``processor.store.cos_ibm.IbmCosStore``, imported only when an API key is configured.
ibm-cos-sdk ships as a source distribution only and caps jmespath, which is why it is optional.
"""

from __future__ import annotations

import os

import boto3

from processor.config import StoreSettings
from processor.errors import ConfigError, StoreAccessError
from processor.redact import redact, split_endpoint
from processor.store.retry import RetryPolicy
from processor.store.s3 import ENDPOINT_CREDENTIAL_SOURCE, S3Store, client_config

#: The standard variables that hold HMAC keys (COS "service credentials" with HMAC enabled).
HMAC_KEY_ENV = "AWS_ACCESS_KEY_ID"
HMAC_SECRET_ENV = "AWS_SECRET_ACCESS_KEY"
#: What installs the IBM SDK an IAM API key needs.
COS_EXTRA_INSTALL = "pip install 'toy-cartoonizer[cos]'"
#: Top-level modules of ibm-cos-sdk: an ImportError naming one of them means the extra is missing.
IBM_SDK_MODULES = frozenset({"ibm_boto3", "ibm_botocore", "ibm_s3transfer"})


class CosStore(S3Store):
    """An IBM COS bucket. ``from_settings`` picks the SDK by the credentials it finds, in this
    order: keys in ``store.endpoint_url`` (HMAC, boto3), an IAM API key in ``$<store.api_key_env>``
    (ibm_boto3), HMAC keys in ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` (boto3)."""

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> CosStore:
        if not settings.bucket or not settings.endpoint_url:
            raise ConfigError("store.bucket and store.endpoint_url are required for an IBM COS store")
        # Keys in the URL (HMAC ``key:secret@``) never reach the client, whose errors quote the URL.
        endpoint_url, url_keys = split_endpoint(settings.endpoint_url)
        api_key = os.environ.get(settings.api_key_env)
        if url_keys is not None:
            return cls.with_hmac_keys(settings, endpoint_url, url_keys.access_key, url_keys.secret_key,
                                      source=ENDPOINT_CREDENTIAL_SOURCE)
        if api_key:
            return _ibm_sdk_store(settings, endpoint_url, api_key)
        if os.environ.get(HMAC_KEY_ENV) and os.environ.get(HMAC_SECRET_ENV):
            return cls.with_hmac_keys(settings, endpoint_url, os.environ[HMAC_KEY_ENV], os.environ[HMAC_SECRET_ENV],
                                      source=f"HMAC keys from ${HMAC_KEY_ENV}/${HMAC_SECRET_ENV}")
        raise StoreAccessError(
            f"IBM COS at {endpoint_url}: no credentials. Set ${settings.api_key_env} to an IAM "
            f"API key (store.api_key_env names the variable; needs {COS_EXTRA_INSTALL}), or "
            f"${HMAC_KEY_ENV} and ${HMAC_SECRET_ENV} to HMAC keys."
        )

    @classmethod
    def with_hmac_keys(cls, settings: StoreSettings, endpoint_url: str | None, access_key: str, secret_key: str,
                       *, source: str) -> CosStore:
        """A store over a boto3 client signing with HMAC keys (SigV4); ``source`` says where they came from."""
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=settings.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=client_config(settings),
        )
        return cls(
            client,
            settings.bucket or "",
            description=redact(f"cos://{settings.bucket} at {client.meta.endpoint_url}"),
            retry_policy=RetryPolicy.from_settings(settings),
            credential_source=source,
        )


def _ibm_sdk_store(settings: StoreSettings, endpoint_url: str | None, api_key: str) -> CosStore:
    """The ibm_boto3 store for an IAM API key, or a ConfigError naming the extra when it is missing."""
    try:
        from processor.store.cos_ibm import IbmCosStore
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in IBM_SDK_MODULES:
            raise
        raise ConfigError(
            f"store.kind: cos with an IAM API key (${settings.api_key_env}) needs the IBM COS SDK, which is "
            f"not installed: {COS_EXTRA_INSTALL}. HMAC keys (${HMAC_KEY_ENV}/${HMAC_SECRET_ENV}) work "
            "without it."
        ) from exc
    return IbmCosStore.with_api_key(settings, endpoint_url, api_key)
