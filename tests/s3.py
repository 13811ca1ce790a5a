"""A real S3 API for tests: moto in server mode on loopback, one per test module.

``moto_env`` starts ``moto_server`` on 127.0.0.1, points boto3 at it through the
environment (``AWS_ENDPOINT_URL_S3`` and test credentials) for the module's duration, and
stops it afterwards. ``new_bucket`` makes an empty bucket with a unique name.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import boto3
import pytest

from cluster.local import MotoServer

_names = itertools.count()


@pytest.fixture(scope="module")
def moto_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.env().items():
            patch.setenv(key, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        try:
            yield server.env()
        finally:
            server.stop()


def new_bucket() -> str:
    name = f"artifacts-{os.getpid()}-{next(_names)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def object_keys(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def tamper_object(bucket: str, key: str) -> None:
    """Flip one byte of an object in the bucket (the hash check must catch it)."""
    client = boto3.client("s3")
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def version_key(bucket: str, prefix: str, category: str, name: str) -> str:
    """The key of file ``name`` in the version the category's pointer names now."""
    import json

    base = f"{prefix}/{category}" if prefix else category
    pointer = boto3.client("s3").get_object(Bucket=bucket, Key=f"{base}/LATEST")["Body"].read()
    return f"{base}/versions/{json.loads(pointer)['artifact_id']}/{name}"

