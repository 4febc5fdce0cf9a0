"""Talk to a real Label Studio through `label-studio-sdk`: create or reuse a project, import
only tasks it does not hold yet (re-push never duplicates), and export annotations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from vllm_canary.dataloop.labelstudio import Mode, config_for
from vllm_canary.errors import UserError

T = TypeVar("T")
BATCH = 500


@dataclass(frozen=True)
class PushResult:
    project_id: int
    project_title: str
    created_project: bool
    imported: int
    already_there: int


def _client(url: str, token: str) -> Any:
    try:
        from label_studio_sdk import LabelStudio
    except ImportError:
        raise UserError("label-studio-sdk is not installed: "
                        "pip install 'vllm-istio-canary[labelstudio]'") from None
    if not token:
        raise UserError("no Label Studio API token: pass --token "
                        "or set VLLM_CANARY_LABELSTUDIO_TOKEN")
    return LabelStudio(base_url=url.rstrip("/"), api_key=token, timeout=60)


@contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn the SDK's and httpx's errors into one-line user errors."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise UserError(f"Label Studio at {url} refused the token (HTTP {exc.status_code}); "
                            "use an account's legacy API token") from None
        if exc.status_code == 404:
            raise UserError(f"Label Studio at {url}: not found (wrong --project?)") from None
        raise UserError(f"Label Studio at {url} answered HTTP {exc.status_code}: "
                        f"{str(exc.body)[:300]}") from None
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach Label Studio at {url}: {exc}") from None


def _call(url: str, fn: Callable[[], T]) -> T:
    with _errors(url):
        return fn()


def find_project(client: Any, title: str) -> Any | None:
    for project in client.projects.list(title=title):
        if project.title == title:
            return project
    return None


def existing_uids(client: Any, project_id: int) -> set[str]:
    uids = set()
    for task in client.tasks.list(project=project_id, fields="all", page_size=500):
        meta = (task.data or {}).get("meta") or {}
        if meta.get("uid"):
            uids.add(str(meta["uid"]))
    return uids


def push(
    url: str, token: str, tasks: list[dict[str, Any]], mode: Mode, title: str,
    project_id: int | None = None,
) -> PushResult:
    """Create (or reuse, by id or title) the project and import the tasks it lacks."""
    client = _client(url, token)

    def run() -> PushResult:
        created = False
        if project_id is not None:
            project = client.projects.get(id=project_id)
        else:
            project = find_project(client, title)
            if project is None:
                project = client.projects.create(title=title, label_config=config_for(mode))
                created = True
        if not created:
            config = getattr(project, "label_config", "") or ""
            needed = "<Pairwise" if mode == "pairwise" else "<Rating"
            if needed not in config:
                raise UserError(f"Label Studio project {project.id} ({project.title!r}) is not a "
                                f"{mode} project: choose another --project or --title")
        have = existing_uids(client, project.id)
        new = [t for t in tasks if t["data"]["meta"]["uid"] not in have]
        for start in range(0, len(new), BATCH):
            client.projects.import_tasks(id=project.id, request=new[start:start + BATCH],
                                         return_task_ids=True)
        return PushResult(project.id, project.title, created, len(new), len(tasks) - len(new))

    return _call(url, run)


def pull(url: str, token: str, project_id: int) -> list[dict[str, Any]]:
    """The project's annotated tasks as a Label Studio JSON export."""
    client = _client(url, token)

    def run() -> list[dict[str, Any]]:
        chunks = client.projects.exports.download_sync(
            id=project_id, export_type="JSON", download_all_tasks=False)
        body = b"".join(chunks)
        try:
            return list(json.loads(body))
        except ValueError:
            raise UserError(f"Label Studio export of project {project_id} is not JSON") from None

    return _call(url, run)
