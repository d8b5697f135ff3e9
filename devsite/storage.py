"""The job working directories as UNICORE storages (``storages/<job id>-uspace``):
properties, file listings and stats, downloads (with ``Range``), uploads, new
directories, deletes, copy and rename.

Paths never leave the job directory: '..' is refused (400) and a symlink that
points outside is refused (403). The path helpers and ``parse_range`` are pure.
"""

import asyncio
import grp
import os
import pwd
import shutil
import stat as st
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from . import SiteError
from .jobs import Job, unicore_time

CHUNK = 64 * 1024


class RangeError(ValueError):
    pass


def path_parts(path: str) -> list[str]:
    """The components of a storage path; '' is the root. Refuses '..' (400)."""
    if "\0" in path:
        raise SiteError(400, "The path must not contain NUL characters.")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SiteError(400, f"The path '{path}' must not contain '..'.")
    return parts


def resolve(root: Path, path: str) -> Path:
    """The real location of ``path`` in the storage ``root``; 403 if a symlink leads out."""
    real_root = root.resolve()
    real = real_root.joinpath(*path_parts(path)).resolve()
    if not real.is_relative_to(real_root):
        raise SiteError(403, f"'{path}' points outside the job's working directory.")
    return real


def parse_range(header: str, size: int) -> tuple[int, int]:
    """First and last byte of a ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` header."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec or "-" not in spec:
        raise RangeError(f"the range '{header}' cannot be read; use bytes=first-last")
    first, _, last = (s.strip() for s in spec.partition("-"))
    if not (first or last) or not all(p.isascii() and p.isdigit() for p in (first, last) if p):
        raise RangeError(f"the range '{header}' cannot be read; use bytes=first-last")
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeError(f"the range '{header}' is empty for a file of {size} bytes")
        return max(0, size - n), size - 1
    start = int(first)
    if start >= size:
        raise RangeError(f"the range '{header}' starts beyond the file's {size} bytes")
    end = int(last) if last else size - 1
    if end < start:
        raise RangeError(f"the range '{header}' ends before it starts")
    return start, min(end, size - 1)


def _name(table: Any, ident: int) -> str:
    try:
        return str(table(ident)[0])
    except KeyError:
        return str(ident)


def file_props(path: Path, root: Path) -> dict[str, Any]:
    """A file's or directory's properties as UNICORE names them (``lastAccessed`` holds
    the modification time, as in UNICORE)."""
    info = path.lstat()
    if st.S_ISLNK(info.st_mode) and path.resolve().is_relative_to(root):
        info = path.stat() if path.exists() else info
    return {
        "isDirectory": st.S_ISDIR(info.st_mode),
        "size": info.st_size,
        "owner": _name(pwd.getpwuid, info.st_uid),
        "group": _name(grp.getgrgid, info.st_gid),
        "permissions": st.filemode(info.st_mode)[1:],
        "lastAccessed": unicore_time(datetime.fromtimestamp(info.st_mtime, UTC)),
    }


def listing(directory: Path, root: Path, offset: int, num: int) -> dict[str, Any]:
    """A directory's properties with its entries: ``content`` maps each entry's storage
    path ("/a", "/dir/") to its properties, ``children`` lists those paths."""
    props = file_props(directory, root)
    content = {}
    for child in sorted(directory.iterdir())[offset : offset + num]:
        child_props = file_props(child, root)
        name = (
            "/" + child.relative_to(root).as_posix() + ("/" if child_props["isDirectory"] else "")
        )
        content[name] = child_props
    return {**props, "children": list(content), "content": content, "metadata": {}}


def _read(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(start)
        left = end - start + 1
        while left > 0:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target)


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "application/octet-stream" not in accept


def storage_json(job: Job, base: str) -> dict[str, Any]:
    """The properties of a job's working directory as a UNICORE storage."""
    url = f"{base}/storages/{job.storage_id}"
    usage = shutil.disk_usage(job.directory)
    links = {
        "self": url,
        "files": f"{url}/files",
        "action:copy": f"{url}/actions/copy",
        "action:rename": f"{url}/actions/rename",
        "job": f"{base}/jobs/{job.id}",
    }
    return {
        "description": "Job's workspace",
        "mountPoint": str(job.directory.resolve()) + "/",
        "filesystemDescription": "",
        "protocols": ["BFT"],
        "umask": "77",
        "metadataSupported": False,
        "freeSpace": usage.free,
        "usableSpace": usage.free,
        "owner": job.dn,
        "acl": [],
        "tags": [],
        "terminationTime": unicore_time(job.expires),
        "resourceStatus": "READY",
        "resourceStatusMessage": "N/A",
        "_links": {rel: {"href": href} for rel, href in links.items()},
    }


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + request.app.state.prefix


def storage_router(storage_job: Any, own_jobs: Any) -> APIRouter:
    """Routes of the storages; ``storage_job`` is the dependency that finds the caller's
    job for ``{sid}`` (404 otherwise), ``own_jobs`` the one that lists the caller's jobs."""
    router = APIRouter()
    StorageJob = Annotated[Job, Depends(storage_job)]

    @router.get("/storages")
    async def list_storages(
        request: Request,
        jobs: Annotated[list[Job], Depends(own_jobs)],
        filter: str = "",
        offset: int = 0,
        num: int = 200,
    ) -> dict[str, Any]:
        # UNICORE 10 lists job directories only with filter=all
        shown = jobs if filter.lower() == "all" else []
        base = base_url(request)
        urls = [f"{base}/storages/{j.storage_id}" for j in shown[offset : offset + num]]
        return {"storages": urls, "_links": {"self": {"href": f"{base}/storages"}}}

    @router.get("/storages/{sid}")
    async def get_storage(request: Request, job: StorageJob) -> dict[str, Any]:
        return storage_json(job, base_url(request))

    @router.get("/storages/{sid}/files")
    @router.get("/storages/{sid}/files/{path:path}")
    async def get_file(
        request: Request, job: StorageJob, path: str = "", offset: int = 0, num: int = 50000
    ) -> Response:
        root = job.directory.resolve()
        target = resolve(root, path)
        if not target.exists():
            raise SiteError(404, f"There is no file '{path}' in the job's working directory.")
        url = f"{base_url(request)}/storages/{job.storage_id}"
        links = {"parentStorage": {"href": url, "description": "Parent Storage"}}
        if target.is_dir():
            if request.headers.get("accept", "").startswith("application/octet-stream"):
                raise SiteError(406, f"'{path or '/'}' is a directory; ask for application/json.")
            body = await asyncio.to_thread(listing, target, root, offset, num)
            return JSONResponse({**body, "_links": links})
        if _wants_json(request):
            props = await asyncio.to_thread(file_props, target, root)
            headers = {"Accept-Ranges": "bytes"}
            return JSONResponse({**props, "metadata": {}, "_links": links}, headers=headers)
        size = target.stat().st_size
        header = request.headers.get("range")
        start, end, status = 0, size - 1, 200
        headers = {"Accept-Ranges": "bytes"}
        if header:
            try:
                start, end = parse_range(header, size)
            except RangeError as exc:
                raise SiteError(
                    416,
                    f"The Range header cannot be served: {exc}.",
                    {"Content-Range": f"bytes */{size}"},
                ) from None
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Length"] = str(max(0, end - start + 1))
        return StreamingResponse(
            _read(target, start, end),
            status_code=status,
            headers=headers,
            media_type="application/octet-stream",
        )

    @router.put(
        "/storages/{sid}/files/{path:path}",
        status_code=204,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                }
            }
        },
    )
    async def put_file(request: Request, job: StorageJob, path: str) -> Response:
        if request.headers.get("content-type", "").startswith("application/json"):
            raise SiteError(
                400,
                "Upload data with Content-Type application/octet-stream; "
                "the development site does not change file properties.",
            )
        root = job.directory.resolve()
        if not path_parts(path):
            raise SiteError(400, "Name the file to upload to.")
        target = resolve(root, path)
        if target.is_dir():
            raise SiteError(409, f"'{path}' is a directory.")
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        f = await asyncio.to_thread(target.open, "wb")
        try:
            async for chunk in request.stream():
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)
        return Response(status_code=204)

    @router.post("/storages/{sid}/files/{path:path}", status_code=201)
    async def make_directory(request: Request, job: StorageJob, path: str) -> Response:
        target = resolve(job.directory, path)
        if target.exists() and not target.is_dir():
            raise SiteError(409, f"'{path}' exists and is not a directory.")
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        url = f"{base_url(request)}/storages/{job.storage_id}/files/{'/'.join(path_parts(path))}"
        return Response(status_code=201, headers={"Location": url})

    @router.delete("/storages/{sid}/files/{path:path}", status_code=204)
    async def delete_file(job: StorageJob, path: str) -> Response:
        parts = path_parts(path)
        if not parts:
            raise SiteError(400, "The working directory itself cannot be removed; delete the job.")
        root = job.directory.resolve()
        # a symlink itself may go (its parent must be inside); anything else is resolved
        link = resolve(root, "/".join(parts[:-1])) / parts[-1]
        target = link if link.is_symlink() else resolve(root, path)
        if not target.exists() and not target.is_symlink():
            raise SiteError(404, f"There is no file '{path}' in the job's working directory.")
        await asyncio.to_thread(_remove, target)
        return Response(status_code=204)

    @router.post(
        "/storages/{sid}/actions/{action}",
        status_code=204,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                        }
                    }
                }
            }
        },
    )
    async def storage_action(request: Request, job: StorageJob, action: str) -> Response:
        if action not in ("copy", "rename"):
            raise SiteError(404, f"The storage has no action '{action}'; use copy or rename.")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("from", "to")
        ):
            raise SiteError(400, "Parameters 'from' and 'to' are required.")
        source, target = resolve(job.directory, body["from"]), resolve(job.directory, body["to"])
        if not source.exists():
            raise SiteError(
                404, f"There is no file '{body['from']}' in the job's working directory."
            )
        if action == "rename":
            await asyncio.to_thread(os.replace, source, target)
        else:
            await asyncio.to_thread(_copy, source, target)
        return Response(status_code=204)

    return router
