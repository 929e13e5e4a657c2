"""The Files and Batches API calls, over an :class:`~processor.client.http.OpenAIClient`'s
session and under its rules: no redirect is followed, secrets are masked in every message,
and what is read is capped (a JSON answer in memory; a file streamed to disk).

Like :mod:`processor.client.http`, this module maps aiohttp's exceptions to
:mod:`processor.errors` (the two are the client's only doors to the network).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..errors import APIError, APITimeout, Redirected, ResponseTooLarge, ServerError
from .answers import Response, classify
from .http import OpenAIClient

__all__ = ["DEFAULT_MAX_DOWNLOAD_MB", "FilesAPI"]

#: the largest file downloaded, in MiB: a 50,000-request output file of long answers.
DEFAULT_MAX_DOWNLOAD_MB = 8192.0
#: the largest JSON answer of a Files / Batches call (a batch object, a list page).
_MAX_JSON = 16 << 20
_ERROR_BODY_LIMIT = 1 << 20
_CHUNK = 1 << 16


class FilesAPI:
    """``GET``/``POST`` JSON calls, a multipart upload and a streamed download.

    Args:
        client: the client whose session, key, URLs and masking are used.
        max_download_mb: the largest file :meth:`download` writes.
    """

    def __init__(self, client: OpenAIClient, *,
                 max_download_mb: float = DEFAULT_MAX_DOWNLOAD_MB) -> None:
        self.client = client
        self.max_download = int(max_download_mb * (1 << 20))

    def _session(self) -> aiohttp.ClientSession:
        return self.client._ensure_session()

    def _transfer_timeout(self) -> aiohttp.ClientTimeout:
        # A 200 MB transfer may take longer than one request's total timeout: bound
        # each read instead.
        return aiohttp.ClientTimeout(total=None, sock_connect=60,
                                     sock_read=self.client._timeout.total)

    async def get(self, endpoint: str, params: Mapping[str, str] | None = None) -> Response:
        """``GET`` a JSON answer (a batch, a file object, a list page)."""
        return await self._call("GET", endpoint, params=params)

    async def post(self, endpoint: str, payload: dict[str, Any] | None = None) -> Response:
        """``POST`` a JSON body (create or cancel a batch)."""
        return await self._call("POST", endpoint, data=orjson.dumps(payload or {}))

    async def upload(self, path: Path, filename: str, purpose: str = "batch") -> Response:
        """``POST /v1/files`` (multipart): ``path``'s bytes named ``filename``, streamed."""
        # aiohttp reads a file payload in its executor, not on the loop.
        with open(path, "rb") as f:  # noqa: ASYNC230
            form = aiohttp.FormData()
            form.add_field("purpose", purpose)
            form.add_field("file", f, filename=filename, content_type="application/jsonl")
            writer = form()
            return await self._call("POST", "/v1/files", data=writer,
                                    headers={"Content-Type": writer.content_type},
                                    timeout=self._transfer_timeout())

    async def download(self, endpoint: str, dest: Path) -> int:
        """Stream ``GET endpoint`` into ``dest`` (written as ``dest.partial``, fsynced, then
        renamed); return its size.

        Raises:
            ResponseTooLarge: the file is larger than ``max_download_mb``.
            APIError: as for any call.
        """
        url = self.client.url_for(endpoint)
        partial = dest.with_name(dest.name + ".partial")
        try:
            async with self._session().get(url, allow_redirects=False,
                                           headers={"Accept": "*/*"},
                                           timeout=self._transfer_timeout()) as resp:
                if resp.status >= 300:
                    await self._refuse(resp, url)
                size = 0
                # 64 KiB writes to a local file: the download is all this task does.
                with open(partial, "wb") as out:  # noqa: ASYNC230
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        size += len(chunk)
                        if size > self.max_download:
                            resp.close()
                            raise ResponseTooLarge(
                                f"file at {endpoint} larger than {self.max_download:,} bytes",
                                status=resp.status, code="response_too_large")
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                length = resp.content_length
                if length is not None and size != length and not resp.headers.get(
                        "Content-Encoding"):
                    raise ServerError(f"file at {endpoint} cut short: {size:,} of "
                                      f"{length:,} bytes", status=resp.status)
            os.replace(partial, dest)
            return size
        except APIError:
            raise
        except asyncio.TimeoutError as exc:
            raise APITimeout("download timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ServerError(self.client.masker.text(f"download cut short: {exc}")) from exc
        except aiohttp.ClientError as exc:
            raise APITimeout(self.client.masker.text(f"{type(exc).__name__}: {exc}")) from exc
        finally:
            partial.unlink(missing_ok=True)

    async def _call(self, method: str, endpoint: str, *, params: Mapping[str, str] | None = None,
                    data: Any = None, headers: Mapping[str, str] | None = None,
                    timeout: aiohttp.ClientTimeout | None = None) -> Response:
        url = self.client.url_for(endpoint)
        kwargs: dict[str, Any] = {"allow_redirects": False, "params": params, "data": data,
                                  "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            async with self._session().request(method, url, **kwargs) as resp:
                if resp.status >= 300:
                    await self._refuse(resp, url)
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    raw += chunk
                    if len(raw) > _MAX_JSON:
                        resp.close()
                        raise ResponseTooLarge(f"answer of {method} {endpoint} larger than "
                                               f"{_MAX_JSON:,} bytes", status=resp.status,
                                               code="response_too_large")
                return classify(resp.status, raw, resp.headers, self.client.masker)
        except APIError:
            raise
        except OSError as exc:  # the file being uploaded
            if not isinstance(exc, aiohttp.ClientError):
                raise
            raise APITimeout(self.client.masker.text(f"{type(exc).__name__}: {exc}")) from exc
        except asyncio.TimeoutError as exc:
            raise APITimeout(f"{method} {endpoint} timed out") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ServerError(self.client.masker.text(f"answer cut short: {exc}")) from exc
        except aiohttp.ClientError as exc:
            raise APITimeout(self.client.masker.text(f"{type(exc).__name__}: {exc}")) from exc

    async def _refuse(self, resp: aiohttp.ClientResponse, url: str) -> None:
        """Raise the error of a non-2xx answer (a 3xx is never followed)."""
        status = resp.status
        masker = self.client.masker
        if status < 400:
            location = resp.headers.get("location")
            shown = masker.url(location, url) if location else None
            raise Redirected(f"HTTP {status} redirect to {shown or '(no Location)'}: not "
                             "followed (the credentials stay with the host they are for)",
                             status=status, location=shown, code="redirect")
        raw = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            raw += chunk[: _ERROR_BODY_LIMIT - len(raw)]
            if len(raw) >= _ERROR_BODY_LIMIT:
                resp.close()
                break
        classify(status, raw, resp.headers, masker)  # raises for any status >= 400
        raise ServerError(f"HTTP {status}", status=status)  # pragma: no cover
