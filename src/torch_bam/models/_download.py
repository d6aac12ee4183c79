"""Weight files in torch.hub's cache: fetched once, checked before use, never half-written.

The cache is torch.hub's (``torch.hub.get_dir()/checkpoints``, under ``$TORCH_HOME``), the one
``load_state_dict_from_url`` uses. A download goes (with torch.hub's progress bar) to a
temporary name beside the final one; a zip archive (pytorchcv ships its ``.pth`` zipped) is
unpacked to another temporary name; the file's hash is checked; only then is it renamed to its
final name. Any failure removes the temporaries and raises one
:class:`~torch_bam.errors.UsageError` naming the address, the cache path and how to place the
file by hand. There is no retry: a failed download fails once, at once. A server that stops
sending fails it too: after ``timeout`` seconds without data (default 60, or the environment
variable ``TORCH_BAM_DOWNLOAD_TIMEOUT``); ``torch.hub.download_url_to_file`` has no timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import uuid
import zipfile
import zlib
from pathlib import Path
from urllib.error import URLError

from ..errors import UsageError
from ._cfg import PretrainedCfg

__all__ = ["cache_path", "download_timeout", "fetch", "file_sha1"]

_CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0  # seconds without data before a download is given up


def download_timeout() -> float:
    """Seconds without data before a download is given up (``TORCH_BAM_DOWNLOAD_TIMEOUT``)."""
    value = os.environ.get("TORCH_BAM_DOWNLOAD_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UsageError(
            f"TORCH_BAM_DOWNLOAD_TIMEOUT={value!r}: give the seconds to wait for data, e.g. 120."
        )
    return seconds


def _download(url: str, dst: Path, progress: bool, timeout: float) -> None:
    """``url`` into ``dst``, as torch.hub's ``download_url_to_file`` (its progress bar), with
    a timeout on every read: a stalled server raises TimeoutError instead of hanging."""
    from urllib.request import Request, urlopen

    from torch.hub import tqdm

    with urlopen(Request(url, headers={"User-Agent": "torch.hub"}), timeout=timeout) as u:
        size = u.headers.get("Content-Length")
        with (
            open(dst, "wb") as f,
            tqdm(
                total=int(size) if size else None,
                disable=not progress,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
            ) as bar,
        ):
            while chunk := u.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))


def cache_path(cfg: PretrainedCfg) -> Path:
    """Where ``cfg``'s weight file lives in torch.hub's cache (whether it is there or not)."""
    import torch.hub

    name = cfg.filename or os.path.basename(cfg.url).removesuffix(".zip")
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def file_sha1(path: str | os.PathLike) -> str:
    sha1 = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha1.update(chunk)
    return sha1.hexdigest()


def _by_hand(cfg: PretrainedCfg, path: Path) -> str:
    source = cfg.url or cfg.origin_url
    unzip = ", unzip it" if cfg.archive == "zip" else ""
    return (
        f"To place the file by hand: download {source}{unzip} and put {path.name} at {path}, "
        f"or pass its path as file=PATH (timm: pretrained_cfg_overlay=dict(file=PATH); "
        f"torch-bam eval: --file PATH)."
    )


def check_hash(cfg: PretrainedCfg, path: Path) -> str | None:
    """The SHA-1 of ``path`` if it differs from ``cfg.hash_sha1``, else None (no hash: None)."""
    if not cfg.hash_sha1:
        return None
    actual = file_sha1(path)
    return actual if actual != cfg.hash_sha1 else None


def fetch(cfg: PretrainedCfg, progress: bool = True, timeout: float | None = None) -> Path:
    """The path of ``cfg``'s weight file in the cache, downloaded and checked first if absent.

    A file already in the cache is not fetched again; its hash is checked at every use.
    ``timeout``: seconds without data before the download is given up (default:
    :func:`download_timeout`).
    """
    path = cache_path(cfg)
    if path.is_file():
        wrong = check_hash(cfg, path)
        if wrong:
            raise UsageError(
                f"{cfg.name}: the cached weight file {path} has SHA-1 {wrong}, not the "
                f"published {cfg.hash_sha1}: it is damaged or not this file. Delete it to "
                f"download it again from {cfg.url or cfg.origin_url}. {_by_hand(cfg, path)}"
            )
        return path
    if not cfg.url:
        raise UsageError(
            f"{cfg.name}: these weights are not downloadable by torch-bam and {path} does not "
            f"exist. {_by_hand(cfg, path)}"
        )
    timeout = download_timeout() if timeout is None else timeout
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only TORCH_HOME on a cluster node, say
        raise UsageError(
            f"{cfg.name}: cannot create the weight cache {path.parent} ({e.strerror or e}). "
            f"Set TORCH_HOME to a writable directory, or download the weights yourself: "
            f"{_by_hand(cfg, path)}"
        ) from None
    stem = f".{path.name}.{uuid.uuid4().hex}"
    download = path.with_name(stem + ".download")
    unpacked = path.with_name(stem + ".unpacked")
    try:
        try:
            _download(cfg.url, download, progress, timeout)
        except (URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            if isinstance(reason, TimeoutError):
                reason = (
                    f"no data for {timeout:g} s; a slow link may need more: "
                    f"TORCH_BAM_DOWNLOAD_TIMEOUT=SECONDS"
                )
            raise UsageError(
                f"{cfg.name}: could not download {cfg.url} into {path.parent} ({reason}). "
                f"{_by_hand(cfg, path)}"
            ) from None
        if cfg.archive == "zip":
            _unzip(cfg, download, unpacked, path)
        else:
            os.replace(download, unpacked)
        wrong = check_hash(cfg, unpacked)
        if wrong:
            raise UsageError(
                f"{cfg.name}: the file downloaded from {cfg.url} has SHA-1 {wrong}, not the "
                f"published {cfg.hash_sha1} (a changed or damaged download); nothing was kept "
                f"in {path.parent}. {_by_hand(cfg, path)}"
            )
        os.replace(unpacked, path)
    finally:
        for tmp in (download, unpacked):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return path


def _unzip(cfg: PretrainedCfg, archive: Path, out: Path, path: Path) -> None:
    """Copy the weight file out of ``archive`` (zip's CRC check included) into ``out``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            member = path.name if path.name in names else (names[0] if len(names) == 1 else None)
            if member is None:
                raise UsageError(
                    f"{cfg.name}: the archive from {cfg.url} holds {names[:3]}, not {path.name}. "
                    f"{_by_hand(cfg, path)}"
                )
            with zf.open(member) as src, open(out, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UsageError(
            f"{cfg.name}: the archive downloaded from {cfg.url} is truncated or corrupt ({e}); "
            f"nothing was kept in {path.parent}. {_by_hand(cfg, path)}"
        ) from None
