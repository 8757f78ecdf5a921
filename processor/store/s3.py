"""S3 through boto3: AWS, SeaweedFS, MinIO, and (as ``CosStore``) IBM COS.

Vendor errors are translated once, here, into ``processor.errors`` types with the vendor error as
``__cause__``; the ``RetryPolicy`` then retries ``TransientStoreError`` alone. botocore's own
retries are off so that one policy (and one retry counter) governs every request.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from processor.config import StoreSettings
from processor.errors import (
    ConfigError,
    ObjectAccessDenied,
    ObjectEncrypted,
    ObjectNotFound,
    ObjectTooLarge,
    ObjectUnreadable,
    PreconditionFailed,
    ProcessorError,
    StoreAccessError,
    StoreError,
    TransientStoreError,
)
from processor.redact import redact, split_endpoint
from processor.store.base import Closeable, ObjectInfo, StoredObject, attachment_header, strip_etag
from processor.store.retry import RetryPolicy

T = TypeVar("T")

#: Keys per LIST request (the S3 maximum).
LIST_PAGE_KEYS = 1000
#: HTTP connections the client keeps per host: prefetch, upload and claim threads share one client.
MAX_POOL_CONNECTIONS = 32

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
#: Refusals of the credentials or the account themselves: fatal whatever the request was.
_CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
    }
)
#: Operations on one key whose refusal is that object's problem, not the bucket's (see errors.py).
_OBJECT_READS = frozenset({"get", "head"})
#: What a GET of an SSE-C object without its key answers: 400 with one of these codes (AWS:
#: InvalidRequest "The object was stored using a form of Server Side Encryption...", SeaweedFS:
#: InvalidArgument "...must provide the customer key.").
_SSE_C_CODES = frozenset({"InvalidRequest", "InvalidArgument"})
_SSE_C_WORDS = ("encrypt", "customer key", "customer-provided", "sse")
_ACCESS_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "NoSuchBucket",
        "403",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)

# conditional_via_headers: the condition rides in the call's params under this name, is moved into
# the per-call request context before botocore validates the params, and becomes HTTP headers
# before signing. Everything lives in that one call's dicts, so threads sharing a client cannot
# see each other's conditions.
_CONDITION_PARAM = "ProcessorConditionHeaders"
_CONDITION_CONTEXT = "processor_condition_headers"


def _take_condition(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    headers = params.pop(_CONDITION_PARAM, None)
    if headers:
        context[_CONDITION_CONTEXT] = headers


def _add_condition_headers(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    params["headers"].update(context.get(_CONDITION_CONTEXT, {}))


#: Bytes: a PUT body below this goes without ``Expect: 100-continue``. botocore adds the header to
#: every PutObject; the handshake saves sending a large body the server will refuse (a 412 on a
#: create-if-absent, a 403), but for a small one it costs a round trip, and S3-compatible servers
#: (SeaweedFS here, MinIO: boto/botocore#1833) now and then answer it with a response urllib3
#: cannot parse, which stalls the request for the whole read timeout (60 s) before the retry. Claims,
#: manifests, records and markers are far below this; large variants keep the handshake.
EXPECT_CONTINUE_MIN_BYTES = 1024 * 1024


def _drop_expect_for_small_bodies(params: dict[str, Any], **_: Any) -> None:
    """``before-call.s3``, registered last: after botocore's own handler (on that same event, so
    it runs after any handler on the more specific ``before-call.s3.PutObject``) added the header."""
    headers = params.get("headers", {})
    if "Expect" not in headers:
        return
    body = params.get("body")
    size = len(body) if isinstance(body, (bytes, bytearray)) else _stream_size(body)
    if size is not None and size < EXPECT_CONTINUE_MIN_BYTES:
        del headers["Expect"]


def _stream_size(body: Any) -> int | None:
    """Bytes left in a seekable stream (botocore wraps ``bytes`` bodies in ``BytesIO``), else None."""
    try:
        here = body.tell()
        end = body.seek(0, 2)
        body.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return int(end - here)


def client_config(
    settings: StoreSettings, config_cls: Callable[..., Any] = botocore.config.Config, **extra: Any
) -> Any:
    """Client options shared by the S3 and COS factories (``config_cls``: boto3's or ibm_boto3's Config)."""
    options: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_s,
        "read_timeout": settings.read_timeout_s,
        # The RetryPolicy retries; botocore retrying underneath would multiply the attempts.
        "retries": {"total_max_attempts": 1},
        "max_pool_connections": MAX_POOL_CONNECTIONS,
        # Requests are SigV4 either way; this makes presigned URLs SigV4 too. boto3's default for
        # them is still the legacy SigV2 query form, which newer AWS regions refuse and which
        # SeaweedFS verifies wrongly once a signed parameter needs escaping.
        "signature_version": "s3v4",
    }
    if settings.endpoint_url:
        # Bucket names in the host need DNS that S3-compatible servers rarely have.
        options["s3"] = {"addressing_style": "path"}
        # Only AWS is sure to accept the checksum headers/trailers boto3 adds by default since 1.36.
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    options.update(extra)
    return config_cls(**options)


class S3Store(Closeable):
    """``ObjectStore`` over one bucket through a boto3 S3 client (the store owns it: it adds event hooks).

    ``conditional_via_headers`` sends ``If-None-Match``/``If-Match`` as raw HTTP headers instead of
    the PutObject/DeleteObject parameters, for SDKs whose models lack them (ibm_boto3).
    ``credential_source`` names where the keys came from, for error messages (never the keys).
    """

    #: botocore's exception classes; a subclass for another SDK fork (ibm_botocore) swaps the module.
    vendor_exceptions: ModuleType = botocore.exceptions
    #: Further exception types that mean "try again" (a subclass's auth transport, say).
    extra_transient: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        description: str,
        retry_policy: RetryPolicy,
        conditional_via_headers: bool = False,
        credential_source: str = "unknown",
    ) -> None:
        self._client = client
        self.bucket = bucket
        self.description = description
        self.retry_policy = retry_policy
        self.credential_source = credential_source
        self._conditional_via_headers = conditional_via_headers
        self._requests = 0
        self._count_lock = threading.Lock()
        events = client.meta.events
        # before-send fires once per HTTP request actually sent (pages and retries included).
        events.register("before-send.s3", self._count_request)
        events.register_last("before-call.s3", _drop_expect_for_small_bodies)
        if conditional_via_headers:
            for op in ("PutObject", "DeleteObject"):
                events.register(f"provide-client-params.s3.{op}", _take_condition)
                events.register(f"before-call.s3.{op}", _add_condition_headers)
        v = self.vendor_exceptions
        self._vendor_errors: tuple[type[BaseException], ...] = (
            v.ClientError,
            v.HTTPClientError,  # connection closed, read timeout
            v.ConnectionError,  # connection refused, connect timeout, TLS (not an HTTPClientError)
            v.ResponseStreamingError,
            v.IncompleteReadError,
            v.NoCredentialsError,
            v.PartialCredentialsError,
            v.CredentialRetrievalError,
            *self.extra_transient,
        )

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> S3Store:
        """A store for ``settings.bucket`` with credentials from the profile or the standard AWS chain."""
        try:
            session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        except botocore.exceptions.ProfileNotFound as exc:
            raise ConfigError(f"store.profile: AWS profile {settings.profile!r} not found ({exc})") from exc
        # Keys in the URL never reach botocore, whose errors quote the URL (and which would sign
        # for a host that includes them): they become the client's keys instead.
        endpoint_url, url_keys = split_endpoint(settings.endpoint_url)
        # None for both: botocore's own credential chain (environment, profile, instance role).
        access_key: str | None = None
        secret_key: str | None = None
        if url_keys is not None:
            access_key, secret_key = url_keys.access_key, url_keys.secret_key
            source = ENDPOINT_CREDENTIAL_SOURCE
        else:
            credentials = session.get_credentials()
            source = describe_credential_source(credentials.method if credentials is not None else None)
            if settings.profile:
                source += f" (profile {settings.profile!r}, store.profile)"
        if not settings.bucket:
            raise ConfigError("store.bucket is required for an S3 store")
        client = session.client("s3", endpoint_url=endpoint_url, config=client_config(settings),
                                aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        return cls(
            client,
            settings.bucket,
            description=redact(f"s3://{settings.bucket} at {client.meta.endpoint_url}"),
            retry_policy=RetryPolicy.from_settings(settings),
            credential_source=source,
        )

    # ------------------------------------------------------------------ protocol

    def list(self, prefix: str, *, start_after: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, ascending, after ``start_after``; one request a page."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_KEYS}
        if start_after:
            params["StartAfter"] = start_after
        while True:
            # partial() freezes this page's params; the retry inside _call resends exactly them.
            page = self._call("list", prefix, functools.partial(self._client.list_objects_v2, **params))
            for obj in page.get("Contents", ()):
                yield ObjectInfo(
                    key=obj["Key"], etag=strip_etag(obj["ETag"]), size=obj["Size"], last_modified=obj["LastModified"]
                )
            if not page.get("IsTruncated"):
                return
            params = {**params, "ContinuationToken": page["NextContinuationToken"]}
            params.pop("StartAfter", None)  # the token carries the position from here on

    def head(self, key: str) -> ObjectInfo:
        try:
            resp = self._call("head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        except ObjectUnreadable:
            # A HEAD error has no body, so its bare 403/400 cannot tell revoked keys or a missing
            # bucket from one unreadable object. A one-byte GET's error body names the code, and
            # its translation says which it is; only this error path pays the extra request.
            def probe() -> Any:
                resp = self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0")
                resp["Body"].close()
                return resp

            self._call("get", key, probe)
            raise  # the GET was allowed after all: the HEAD's refusal stands
        return replace(self._info(key, resp), metadata=dict(resp.get("Metadata", {})))

    def get(self, key: str, *, max_bytes: int | None = None) -> StoredObject:
        def attempt() -> StoredObject:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
            stream = resp["Body"]
            try:
                size = resp["ContentLength"]
                if max_bytes is not None and size > max_bytes:
                    raise ObjectTooLarge(f"{key} is {size} bytes; limit is {max_bytes}", key=key, size=size)
                # Read at most one byte past the cap even if the length header lied (a proxy
                # re-chunking the body): the cap bounds memory, not just the header's claim.
                body = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
                if max_bytes is not None and len(body) > max_bytes:
                    raise ObjectTooLarge(f"{key} is over {max_bytes} bytes; limit is {max_bytes}",
                                         key=key, size=len(body))
            finally:
                stream.close()  # unread bytes are dropped with the connection, not downloaded
            return StoredObject(info=self._info(key, resp), body=body, metadata=resp.get("Metadata", {}))

        return self._call("get", key, attempt)

    def put(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> ObjectInfo:
        if if_none_match and if_match is not None:
            raise ValueError("put takes if_none_match or if_match, not both")
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": content_type,
            "Metadata": dict(metadata or {}),
        }
        params.update(self._conditions(if_none_match=if_none_match, if_match=if_match))
        resp = self._call("put", key, lambda: self._client.put_object(**params))
        server_time = _server_time(resp)
        return ObjectInfo(
            key=key,
            etag=strip_etag(resp["ETag"]),
            size=len(body),
            # PutObject answers no Last-Modified; the response's Date is the server's clock at
            # (or a moment after) the write, which is what claim expiry compares against.
            last_modified=server_time or datetime.now(timezone.utc),
            server_time=server_time,
        )

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete ``key``; a missing key is fine unless ``if_match`` names a version to delete."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        params.update(self._conditions(if_none_match=False, if_match=if_match))
        try:
            self._call("delete", key, lambda: self._client.delete_object(**params))
        except ObjectNotFound as exc:
            if if_match is None:
                raise
            # Some servers answer a conditional delete of a missing key with 404, others with 412.
            raise PreconditionFailed(f"{key} does not exist (expected ETag {if_match})", key=key) from exc

    def close(self) -> None:
        """Close the client's connection pool (idempotent: botocore's close is)."""
        self._client.close()

    def request_count(self) -> int:
        with self._count_lock:
            return self._requests

    def presigned_get_url(self, key: str, expires_s: int, *, attachment: bool = False) -> str:
        """A URL that GETs ``key`` for ``expires_s`` seconds without further credentials (SigV4 query
        signing, made locally: no request). It carries the access key id and a signature, never the
        secret. ``attachment`` signs ``response-content-disposition: attachment`` in, so a browser
        saves the file: a link's ``download`` attribute is ignored across origins, and a presigned
        URL is always another origin than the page. Not part of ``ObjectStore``: the HTTP API uses
        it where a store offers it."""
        params = {"Bucket": self.bucket, "Key": key}
        if attachment:
            params["ResponseContentDisposition"] = attachment_header(key.rsplit("/", 1)[-1])
        try:
            return self._client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_s)
        except self._vendor_errors as exc:
            raise self._translate(exc, "presign", key) from exc

    # ------------------------------------------------------------------ helpers

    def _count_request(self, **_: Any) -> None:
        with self._count_lock:
            self._requests += 1
        # Returning None lets botocore send the request (a value would stand in for the response).

    def _conditions(self, *, if_none_match: bool, if_match: str | None) -> dict[str, Any]:
        headers: dict[str, str] = {}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        if not headers:
            return {}
        if self._conditional_via_headers:
            return {_CONDITION_PARAM: headers}
        return {name.replace("-", ""): value for name, value in headers.items()}  # IfNoneMatch, IfMatch

    def _info(self, key: str, resp: Mapping[str, Any]) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            etag=strip_etag(resp["ETag"]),
            size=resp["ContentLength"],
            last_modified=resp["LastModified"],
            server_time=_server_time(resp),
        )

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` with vendor errors translated and transient ones retried by the policy."""

        def attempt() -> T:
            try:
                return fn()
            except self._vendor_errors as exc:
                translated = self._translate(exc, op, key)
                # A backstop: the client never saw URL credentials, but a message must not carry any.
                translated.args = tuple(redact(a) if isinstance(a, str) else a for a in translated.args)
                raise translated from exc

        return self.retry_policy.call(attempt, op=op, key=key)

    def _object_refusal(self, code: str, status: int, detail: str, op: str, key: str) -> ObjectUnreadable | None:
        """The error of a GET/HEAD refused for this one object, or None when it is not one."""
        text = detail.lower()
        if status == 403 and (code in ("AccessDenied", "403", "Forbidden", "") or code.startswith("KMS.")):
            # On a HEAD (no body, bare "403") ``head`` asks again with a GET to learn the code.
            return ObjectAccessDenied(
                f"{self.description}: {op} {key!r} refused ({detail}): the credentials from "
                f"{self.credential_source} may not read this object (a bucket or object policy, an "
                "ACL, or a KMS key they may not use); other objects are unaffected", key=key)
        if code.startswith("KMS."):
            return ObjectAccessDenied(f"{self.description}: {op} {key!r}: its KMS key refused to decrypt "
                                      f"it ({detail})", key=key)
        if status == 400 and (code in _SSE_C_CODES and any(w in text for w in _SSE_C_WORDS)):
            return ObjectEncrypted(f"{self.description}: {op} {key!r}: the object is encrypted with a "
                                   f"customer-provided key (SSE-C), which this worker does not have ({detail})",
                                   key=key)
        if status == 400 and op == "head" and code in ("400", "BadRequest", ""):
            # A HEAD has no body to say why; on S3 a 400 for an existing key means SSE-C.
            return ObjectEncrypted(f"{self.description}: head {key!r} answered 400 Bad Request, which S3 "
                                   "answers for an object encrypted with a customer-provided key (SSE-C)",
                                   key=key)
        return None

    def _translate(self, exc: BaseException, op: str, key: str) -> ProcessorError:
        v = self.vendor_exceptions
        where = f"{self.description}: {op} {key!r}"
        if isinstance(exc, v.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            detail = f"{code or status}: {error.get('Message', '')}".rstrip(": ")
            if code == "NoSuchBucket":
                return StoreAccessError(f"{self.description}: bucket {self.bucket!r} does not exist ({detail})")
            if op in _OBJECT_READS and code not in _CREDENTIAL_CODES:
                unreadable = self._object_refusal(code, status, detail, op, key)
                if unreadable is not None:
                    return unreadable
            if code in _NOT_FOUND_CODES or status == 404:
                return ObjectNotFound(f"{key} does not exist in {self.description}", key=key)
            if code in _PRECONDITION_CODES or status == 412:
                return PreconditionFailed(f"{where}: condition not met ({detail})", key=key)
            if code in _ACCESS_CODES or status in (401, 403):
                return StoreAccessError(
                    f"{self.description}: access refused ({detail}) on {op}; credentials from "
                    f"{self.credential_source}. Check the keys and that they may use bucket {self.bucket!r}."
                )
            if code == "NotImplemented":
                # e.g. a server without conditional writes: retrying cannot help.
                return StoreError(f"{where}: the server does not support this request ({detail})", key=key)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return TransientStoreError(f"{where}: {detail}", key=key)
            return StoreError(f"{where}: {detail}", key=key)
        if isinstance(exc, (v.NoCredentialsError, v.PartialCredentialsError, v.CredentialRetrievalError)):
            return StoreAccessError(f"{self.description}: no usable credentials ({self.credential_source}): {exc}")
        if isinstance(exc, v.SSLError):
            return StoreAccessError(f"{self.description}: TLS failed (check endpoint_url and CA bundle): {exc}")
        # Connection refused/reset, timeouts, truncated bodies: worth another attempt.
        return TransientStoreError(f"{where}: {type(exc).__name__}: {exc}", key=key)


#: The credential source of keys written into ``store.endpoint_url`` (``http://key:secret@host``).
ENDPOINT_CREDENTIAL_SOURCE = "the key:secret in store.endpoint_url"

#: Where botocore found the keys (``Credentials.method``), in words a user can act on.
_CREDENTIAL_SOURCES = {
    "env": "environment variables $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY",
    "explicit": "keys passed to the client",
    "shared-credentials-file": "the shared credentials file ($AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)",
    "config-file": "the AWS config file ($AWS_CONFIG_FILE or ~/.aws/config)",
    "iam-role": "the instance's IAM role (EC2 metadata)",
    "container-role": "the container's IAM role ($AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)",
    "assume-role-with-web-identity": "a web identity token ($AWS_WEB_IDENTITY_TOKEN_FILE, e.g. EKS IRSA)",
}


def describe_credential_source(method: str | None) -> str:
    """Where the keys came from, for error messages: names variables and files, never values."""
    if method is None:
        return ("none found: set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, or store.profile "
                "(a profile in ~/.aws/credentials)")
    return _CREDENTIAL_SOURCES.get(method, f"botocore provider {method!r}")


def _server_time(resp: Mapping[str, Any]) -> datetime | None:
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    return parsedate_to_datetime(date).astimezone(timezone.utc) if date else None

