"""Inputs on object storage: ``s3://``, ``gs://`` and any other filesystem pyarrow or fsspec knows, by URI.

A worker reads an object into a local temp file for the time of one stage call (PyAV and the sandboxed decoder
want a file), so a cluster needs no disk shared with the driver for its inputs. Credentials come from where the
filesystem's own library looks (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_PROFILE``, Google's
application credentials, ...), never from a command line; ``AWS_ENDPOINT_URL`` points ``s3://`` at an
S3-compatible server (MinIO, SeaweedFS, Ceph). Nothing here imports Ray.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from urllib.parse import urlparse

import pyarrow.fs as pafs

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_uri(spec) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path stays a path)."""
    return isinstance(spec, str) and bool(_URI.match(spec)) and not spec.startswith("file://")


_SECRET_QUERY = re.compile(r"(^|&)(access_key|secret_key|session_token|password|token)=", re.IGNORECASE)


def refuse_credentials(uri: str) -> None:
    """Raise ValueError when ``uri`` carries credentials (``s3://KEY:SECRET@bucket``, ``?secret_key=``): a command
    line is seen by every user of the host and kept in shell history and logs. The message does not repeat it."""
    if not is_uri(uri):
        return
    parsed = urlparse(uri)
    if parsed.password or parsed.username or _SECRET_QUERY.search(parsed.query):
        raise ValueError(f"a {parsed.scheme}:// URI with credentials in it is refused (not repeated here): give them "
                         "through the standard variables or a profile (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS)")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for ``uri``. pyarrow's own filesystems first (S3, GCS, HDFS), then any
    fsspec protocol through pyarrow's adapter."""
    refuse_credentials(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3" and os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
        fs = pafs.S3FileSystem(endpoint_override=endpoint.netloc or endpoint.path, scheme=endpoint.scheme or "https",
                               region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"),
                               retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=6))
        return fs, (parsed.netloc + parsed.path).rstrip("/")
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError):  # pyarrow.lib.ArrowInvalid is a ValueError: a scheme pyarrow lacks
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def list_objects(uri: str, suffixes: tuple[str, ...]) -> list[str]:
    """Every object below ``uri`` whose name ends with one of ``suffixes`` (or ``uri`` itself when it names one
    object), as full URIs, sorted."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri!r}: no such object or prefix")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    base, prefix = uri.rstrip("/"), path.rstrip("/")  # each object's uri keeps the form the user wrote
    return sorted(base + f.path[len(prefix):] for f in found
                  if f.type == pafs.FileType.File and f.path.lower().endswith(suffixes) and f.path.startswith(prefix))


@contextmanager
def local_copy(uri: str, max_bytes: int | None = None):
    """The object at ``uri`` as a local temp file (same suffix), removed afterwards. An object larger than
    ``max_bytes`` is not downloaded: the temp file is made sparse at the object's size instead, so a size check
    on it refuses the object without the transfer."""
    fs, path = filesystem(uri)
    suffix = os.path.splitext(path)[1][:16]
    fd, tmp = tempfile.mkstemp(prefix="tessera-input-", suffix=suffix)
    try:
        size = fs.get_file_info(path).size if max_bytes is not None else None
        with os.fdopen(fd, "wb") as out:
            if size is not None and size > max_bytes:
                out.truncate(size)
            else:
                with fs.open_input_stream(path) as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
        yield tmp
    finally:
        os.unlink(tmp)
