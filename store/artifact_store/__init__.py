"""Artifact stores: where runs and uploads are kept, chosen by ``LTH_ARTIFACT_URL``.

``open_artifact_store(settings)`` is the only constructor the service and the workers use.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from store.artifact_store.base import ArtifactStore, StoredObject, file_sha256
from store.artifact_store.keys import InvalidKeyError, check_key, check_prefix, is_hidden
from store.artifact_store.local import LocalArtifactStore
from store.settings import Settings

__all__ = [
    "ArtifactStore",
    "InvalidKeyError",
    "LocalArtifactStore",
    "StoredObject",
    "check_key",
    "check_prefix",
    "file_sha256",
    "is_hidden",
    "open_artifact_store",
]


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``settings`` name: a local folder or an S3 bucket (boto3 imported only then)."""
    url = settings.artifact_store_url
    if url.startswith("file://"):
        return LocalArtifactStore(Path(unquote(urlparse(url).path)))
    import boto3
    from botocore.config import Config

    from store.artifact_store.s3 import S3ArtifactStore, S3Location

    secret = settings.s3_secret_access_key
    options = {
        "region_name": settings.s3_region,
        "aws_access_key_id": settings.s3_access_key_id,
        "aws_secret_access_key": secret.get_secret_value() if secret else None,
        "config": Config(
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        ),
    }
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=settings.s3_endpoint_url, **options)  # type: ignore[call-overload]
    public = settings.s3_public_endpoint_url
    presign = session.client("s3", endpoint_url=public, **options) if public else None  # type: ignore[call-overload]
    return S3ArtifactStore(S3Location.parse(url), client, presign)
