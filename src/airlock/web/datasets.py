"""The datasets pages: upload (the page's script posts the file to /api/datasets), the datasets the
signed-in key may read (its holder's own and those shared with it; every owner's for approvers and
admins), and one dataset's size, length histogram and first records rendered as chat turns."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.access.roles import may
from airlock.errors import AirlockError
from airlock.gateway.deps import AirlockDep, Key, reader_of
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("datasets:read"))) -> HTMLResponse:
    from airlock.datasets.service import list_datasets

    return render(request, "datasets.html", key, datasets=list_datasets(airlock, reader=reader_of(key)),
                  can_upload=may(key, "datasets:write"))


@router.get("/datasets/{name_or_digest:path}", response_class=HTMLResponse)
def dataset_page(name_or_digest: str, request: Request, airlock: AirlockDep,
                 key: Key = Depends(page("datasets:read"))) -> HTMLResponse:
    from airlock.datasets.profile import profile

    settings = request.app.state.settings
    tokenizer = settings.model_path(settings.serve_base_model) / "tokenizer.json"
    try:
        shown = profile(airlock, name_or_digest, reader=reader_of(key), tokenizer_file=tokenizer)
    except AirlockError as exc:
        return render(request, "error.html", key, status=exc.http_status, error=exc.message)
    peak = max((b["count"] for b in shown["histogram"]), default=0)
    return render(request, "dataset.html", key, dataset=shown, peak=peak, tokenizer=settings.serve_base_model,
                  quoted=quote(shown["name"], safe=""))
