"""S3-compatible storage with boto3: AWS S3, Cloudflare R2, Backblaze B2, MinIO, SeaweedFS, RunPod.

Settings chosen for the least capable of them: multipart parts of 64 MB (RunPod allows at
most 500 MB), single-key deletes (RunPod has no DeleteObjects), long read timeouts and the
standard retry mode with 10 attempts. Credentials come only from the AWS chain (environment,
profile, instance role); they are never read, logged or written by this project.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ehrseq.errors import InputError
from ehrseq_runner.storage.base import StorageUnavailable, WriteConflict

PART_SIZE = 64 * 1024 * 1024


class S3Storage:
    def __init__(self, uri: str, endpoint_url: str | None = None) -> None:
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise InputError(f"storage.uri {uri!r}: expected s3://BUCKET[/PREFIX]")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        session = boto3.session.Session()  # a fresh session: credentials are read now, not cached from before
        config = Config(retries={"max_attempts": 10, "mode": "standard"}, connect_timeout=10, read_timeout=120,
                        s3={"addressing_style": "path" if endpoint else "auto"})
        self.client = session.client("s3", endpoint_url=endpoint, config=config)
        # The start-up check fails fast instead of retrying for a minute.
        self._check_client = session.client("s3", endpoint_url=endpoint, config=config.merge(
            Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5)))
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                       max_concurrency=8, use_threads=True)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        """Fails fast, before any training, if the bucket cannot be reached."""
        try:
            self._check_client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            denied = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            hint = {"404": "the bucket does not exist", "NoSuchBucket": "the bucket does not exist",
                    "403": denied, "AccessDenied": denied, "SignatureDoesNotMatch": denied,
                    "InvalidAccessKeyId": denied}.get(code, code)
            raise InputError(f"storage.uri {self.uri!r}: {hint}") from None
        except BotoCoreError as e:
            raise InputError(f"storage.uri {self.uri!r}: cannot reach storage ({type(e).__name__}); "
                             "check storage.endpoint_url / AWS_ENDPOINT_URL and credentials") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        with _transient():
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        with _transient():
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        with _transient():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _transient():
            self.client.download_file(self.bucket, self._key(key), str(dest), Config=self.transfer)

    def exists(self, key: str) -> bool:
        try:
            with _transient():
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with _transient():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=root + prefix):
                keys += [obj["Key"][len(root):] for obj in page.get("Contents", [])]
        return sorted(keys)

    def delete(self, key: str) -> None:
        with _transient():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        with _transient():
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]

    def version(self, key: str) -> str:
        with _transient():
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"]

    def create(self, key: str, data: bytes | Path) -> str:
        """PUT with `If-None-Match: *` (AWS S3 since 2024, R2, MinIO, SeaweedFS): 412 if the key exists."""
        return self._put_if(key, data, IfNoneMatch="*")

    def replace_if(self, key: str, data: bytes | Path, tag: str) -> str:
        """PUT with `If-Match: ETAG`: 412 if the object changed since it was read."""
        return self._put_if(key, data, IfMatch=tag)

    def _put_if(self, key: str, data: bytes | Path, **condition: str) -> str:
        """One conditional PUT; a file over PART_SIZE as a multipart upload whose completion carries the
        condition (boto3's transfer manager cannot pass it), so a large write is fenced like a small one."""
        with _transient(), _conflict(key):
            if isinstance(data, bytes):
                return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                              **condition)["ETag"]
            if data.stat().st_size <= PART_SIZE:
                with data.open("rb") as body:
                    return self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                                  **condition)["ETag"]
            return self._multipart_if(self._key(key), data, condition)

    def _multipart_if(self, key: str, path: Path, condition: dict[str, str]) -> str:
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]

        def part(number: int) -> dict[str, Any]:
            with path.open("rb") as f:
                f.seek((number - 1) * PART_SIZE)
                body = f.read(PART_SIZE)
            return {"PartNumber": number, "ETag": self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]}

        try:
            with ThreadPoolExecutor(self.transfer.max_concurrency) as pool:
                parts = list(pool.map(part, range(1, -(-path.stat().st_size // PART_SIZE) + 1)))
            return self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                                         MultipartUpload={"Parts": parts}, **condition)["ETag"]
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):  # else the store expires it (a lifecycle rule)
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise


class _conflict:
    """Maps a failed precondition (412; 409 when two conditional writes race; the object gone) to WriteConflict."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"):
                raise WriteConflict(self.key) from None
        return False


class _transient:
    """Maps boto errors: missing keys to FileNotFoundError, network and 5xx to StorageUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            return False
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(code) from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or code in ("SlowDown", "RequestTimeout"):
                raise StorageUnavailable(f"storage error {code}") from exc
            return False
        if isinstance(exc, BotoCoreError):
            raise StorageUnavailable(f"storage unreachable: {type(exc).__name__}") from exc
        return False
