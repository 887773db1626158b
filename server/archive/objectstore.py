"""Blobs and derived products kept in an object store (S3, GCS, Azure, or a folder) through obstore.

The filesystem stays the default and stays in use: with ``blob_store_url`` set, the data
folder becomes this machine's cache of the object store. A blob is uploaded once its
temp file is fsync'd, before it is renamed into place and indexed, so every local blob and
every indexed instance is in the object store; a server that does not have it locally fetches it on first
read (to a temp file, renamed into place), so every reader keeps reading a local path.
Object keys are made from the SHA-256 only, like local paths: ``ab/<sha256>``.

Derived products (a tile pyramid, a cine MP4) go under ``derived/``, uploaded whole after
they are built and fetched whole by a machine that needs one before it would build it, so
tiles and videos are always served from local files. A product made of many files (a zarr
pyramid) is published with a ``.complete`` marker written last: a reader trusts only a
product whose marker exists, never half an upload.

``s3://bucket/prefix?endpoint=http://minio:9000&region=eu-west-1`` passes query
parameters to obstore as options; everything else (credentials above all) comes from the
standard environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) or the
machine's role, as for any S3 client.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from server.config import ConfigError

CHUNK = 8 * 1024 * 1024
DERIVED = "derived"
COMPLETE = ".complete"  # written last under a published folder product
TRANSFERS = 8  # files of one folder product moved at once (obstore releases the GIL)
# URL query parameters that are HTTP client options rather than store options.
CLIENT_OPTIONS = frozenset(
    {"allow_http", "allow_invalid_certificates", "timeout", "connect_timeout", "proxy_url"}
)
_PREFIX = re.compile(r"^[0-9a-f]{2}/?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _split_url(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The store URL without its query, and the query as obstore store and client options."""
    parts = urlsplit(url)
    config: dict[str, str] = {}
    client: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in CLIENT_OPTIONS:
            client[name] = value.lower() in ("1", "true", "yes") if name.startswith("allow_") else value
        else:
            config[name] = value
    return urlunsplit(parts._replace(query="")), config, client


class BlobMirror:
    """The object store: blobs at ``ab/<sha256>``, derived products under ``derived/``."""

    def __init__(self, url: str) -> None:
        try:
            import obstore
            from obstore.store import from_url
        except ImportError as exc:  # an optional dependency
            raise ConfigError(
                "setting blob_store_url needs obstore: pip install 'tessera[object-storage]'"
            ) from exc
        self._obstore = obstore
        self.url, config, client = _split_url(url)  # the query may carry options, never shown
        try:
            options: dict[str, Any] = dict(config)
            if client:
                options["client_options"] = client
            self.store = from_url(self.url, **options)
            # One listing proves the bucket exists and the credentials work: fail at start, not at ingest.
            next(iter(obstore.list(self.store, chunk_size=1)), None)
        except BaseException as exc:  # unknown scheme or option, missing bucket, refused credentials
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise ConfigError(f"setting blob_store_url: cannot open {self.url}: {exc}") from exc

    # -- blobs ----------------------------------------------------------------------------------

    @staticmethod
    def key(sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}"

    def put(self, sha256: str, path: Path) -> None:
        """Upload a local blob (multipart for large files); content-addressed, so re-uploading is harmless."""
        self.put_object(self.key(sha256), path)

    def fetch(self, sha256: str, destination: Path) -> bool:
        """Stream the blob into ``destination`` (fsync'd); False if the store does not have it."""
        return self.fetch_object(self.key(sha256), destination, durable=True)

    def iter_hashes(self) -> Iterator[str]:
        """Every blob in the store: one listing per ``ab/`` folder, so derived products are never listed."""
        try:
            top = self._obstore.list_with_delimiter(self.store)
            for prefix in sorted(top["common_prefixes"]):
                if not _PREFIX.match(prefix):
                    continue
                for batch in self._obstore.list(self.store, prefix=prefix.rstrip("/") + "/", chunk_size=1000):
                    for meta in batch:
                        name = str(meta["path"]).rsplit("/", 1)[-1]
                        if _HEX64.match(name):
                            yield name
        except Exception as exc:
            raise OSError(f"object store {self.url}: {exc}") from exc

    def exists(self, sha256: str) -> bool:
        try:
            self._obstore.head(self.store, self.key(sha256))
        except FileNotFoundError:
            return False
        return True

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._obstore.delete(self.store, self.key(sha256))

    # -- derived products -----------------------------------------------------------------------

    @staticmethod
    def derived_key(name: str) -> str:
        """``derived/<name>``, ``name`` being the product's path under the derived folder."""
        return f"{DERIVED}/{name}"

    def fetch_product_file(self, name: str, final: Path) -> bool:
        """Fetch a one-file product to ``final`` (temp file beside it, then rename); False if absent."""
        temp = final.with_name(f".get-{final.name}-{os.getpid()}-{id(self):x}.part")
        try:
            if not self.fetch_object(self.derived_key(name), temp, durable=False):
                return False
            os.replace(temp, final)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def publish_product_file(self, name: str, path: Path) -> None:
        """Upload a built one-file product; on failure the local file goes too (it must not stay unpublished)."""
        try:
            self.put_object(self.derived_key(name), path)
        except OSError:
            path.unlink(missing_ok=True)
            raise

    def fetch_product_folder(self, name: str, destination: Path) -> bool:
        """Download a published folder product into ``destination`` (made here); False if not published."""
        key = self.derived_key(name)
        try:
            self._obstore.head(self.store, f"{key}/{COMPLETE}")
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise OSError(f"object store {self.url}: {exc}") from exc
        try:
            names = [
                str(meta["path"])[len(key) + 1 :]
                for batch in self._obstore.list(self.store, prefix=f"{key}/", chunk_size=1000)
                for meta in batch
            ]
        except Exception as exc:
            raise OSError(f"object store {self.url}: {exc}") from exc
        destination.mkdir(parents=True)
        files = [n for n in names if n and n != COMPLETE and ".." not in n.split("/")]
        for folder in {(destination / n).parent for n in files}:
            folder.mkdir(parents=True, exist_ok=True)

        def one(relative: str) -> None:
            if not self.fetch_object(f"{key}/{relative}", destination / relative, durable=False):
                raise OSError(f"object store {self.url}: {key}/{relative} vanished during download")

        with ThreadPoolExecutor(TRANSFERS, thread_name_prefix="tessera-fetch") as pool:
            list(pool.map(one, files))
        return True

    def publish_product_folder(self, name: str, folder: Path) -> None:
        """Upload every file of a built folder product, then its ``.complete`` marker."""
        key = self.derived_key(name)
        files = [p for p in folder.rglob("*") if p.is_file()]
        with ThreadPoolExecutor(TRANSFERS, thread_name_prefix="tessera-publish") as pool:
            list(pool.map(lambda p: self.put_object(f"{key}/{p.relative_to(folder).as_posix()}", p), files))
        try:
            self._obstore.put(self.store, f"{key}/{COMPLETE}", b"")
        except Exception as exc:
            raise OSError(f"object store {self.url}: {exc}") from exc

    # -- transfers ------------------------------------------------------------------------------

    def put_object(self, key: str, path: Path) -> None:
        try:
            self._obstore.put(self.store, key, path)
        except Exception as exc:  # network, credentials, quota: the caller's write fails
            raise OSError(f"object store {self.url}: {exc}") from exc

    def fetch_object(self, key: str, destination: Path, durable: bool) -> bool:
        """Stream an object into ``destination``; False if the store does not have it."""
        try:
            result = self._obstore.get(self.store, key)
            with open(destination, "wb") as out:
                for chunk in result.stream(CHUNK):
                    out.write(chunk)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
        except FileNotFoundError:
            return False
        except OSError:
            raise
        except Exception as exc:
            raise OSError(f"object store {self.url}: {exc}") from exc
        return True


def open_mirror(url: str) -> BlobMirror | None:
    """The configured object store, or None for the filesystem-only default."""
    return BlobMirror(url) if url else None
