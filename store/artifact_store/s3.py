"""The artifact store on S3-compatible object storage (AWS S3, MinIO, Ceph, moto …).

boto3 rather than obstore: it is what every S3-compatible server is tested against, it makes
presigned URLs and multipart uploads itself, and moto serves it in tests. Objects live under
``s3://<bucket>/<prefix>``; the sha256 of every object the service writes is kept in its user
metadata, so a listing's hashes cost a HEAD each (remembered per ETag), never a download.
Uploads of objects over 16 MiB are multipart; S3 makes an object visible only once complete.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from store.artifact_store.base import CHUNK, ArtifactStore, StoredObject, file_sha256
from store.artifact_store.keys import check_key, check_prefix, is_hidden

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

_SHA_META = "sha256"
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "<path>/"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        return cls(bucket, check_prefix(prefix.strip("/")))


def _missing(error: Exception) -> bool:
    code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3ArtifactStore(ArtifactStore):
    def __init__(
        self, location: S3Location, client: S3Client, presign_client: S3Client | None = None
    ) -> None:
        self.location = location
        self.client = client
        self.presign_client = presign_client or client
        self.url = f"s3://{location.bucket}/{location.prefix}"
        self._hashes = lru_cache(maxsize=8192)(self._head_sha256)

    def _key(self, key: str) -> str:
        return self.location.prefix + check_key(key)

    # ---- the interface ------------------------------------------------------------------------

    def put_file(self, key: str, source: Path, *, sha256: str | None = None) -> None:
        from boto3.s3.transfer import TransferConfig

        digest = sha256 or file_sha256(source)
        self.client.upload_file(
            str(source),
            self.location.bucket,
            self._key(key),
            ExtraArgs={"Metadata": {_SHA_META: digest}},
            Config=TransferConfig(multipart_threshold=16 * 1024 * 1024, use_threads=False),
        )

    def get_file(self, key: str, destination: Path) -> bool:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp"
        )
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    body = self.client.get_object(Bucket=self.location.bucket, Key=self._key(key))
                except Exception as error:
                    if _missing(error):
                        return False
                    raise
                for chunk in body["Body"].iter_chunks(CHUNK):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(destination)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.location.bucket, Key=self._key(key))
        except Exception as error:
            if _missing(error):
                return None
            raise
        return body["Body"].read()

    def stat(self, key: str) -> StoredObject | None:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=self._key(key))
        except Exception as error:
            if _missing(error):
                return None
            raise
        return StoredObject(
            key=key,
            size=head["ContentLength"],
            modified=head["LastModified"],
            version=head["ETag"],
            sha256=head.get("Metadata", {}).get(_SHA_META),
        )

    def list(self, prefix: str) -> list[StoredObject]:
        prefix = check_prefix(prefix)
        found: list[StoredObject] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix + prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"].removeprefix(self.location.prefix)
                if not is_hidden(key):
                    found.append(
                        StoredObject(
                            key=key,
                            size=item["Size"],
                            modified=item["LastModified"],
                            version=item["ETag"],
                        )
                    )
        return sorted(found, key=lambda item: item.key)

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        try:
            body = self.client.get_object(
                Bucket=self.location.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
            )
        except Exception as error:
            if _missing(error):
                raise FileNotFoundError(key) from error
            raise
        stream = body["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from stream.iter_chunks(CHUNK)
            finally:
                stream.close()

        return chunks()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.location.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix)
        if not prefix:
            raise ValueError("refusing to delete the whole store")
        # Hidden and temporary names too: nothing of a deleted run may stay behind.
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=self.location.prefix + prefix
        )
        keys = sorted({item["Key"] for page in pages for item in page.get("Contents", [])})
        for start in range(0, len(keys), _DELETE_BATCH):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in keys[start : start + _DELETE_BATCH]
            ]
            self.client.delete_objects(
                Bucket=self.location.bucket, Delete={"Objects": batch, "Quiet": True}
            )
        return len(keys)

    def presigned_url(self, key: str, *, expires_s: int, filename: str) -> str | None:
        safe = filename.replace('"', "")
        return self.presign_client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.location.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{safe}"',
            },
            ExpiresIn=expires_s,
        )

    def sha256(self, item: StoredObject) -> str:
        if item.sha256 is not None:
            return item.sha256
        return self._hashes(item)

    def _head_sha256(self, item: StoredObject) -> str:
        """The recorded hash of this version of an object (a HEAD); read it when none is."""
        found = self.stat(item.key)
        if found is not None and found.sha256 is not None and found.version == item.version:
            return found.sha256
        return super().sha256(item)
