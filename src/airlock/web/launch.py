"""The new fine-tune page: a form over a workflow (fine-tune, evaluate against the base model, the
promotion gate, serving under an alias). The page's script turns the form into the workflow spec,
shows it as YAML with the CLI command that runs it, and queues it through POST /api/runs, whose
checks (every problem at once) are the same the CLI's are."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from airlock.gateway.deps import AirlockDep, Key, reader_of
from airlock.train.config import LoraTrainConfig
from airlock.web.pages import page, render

router = APIRouter(include_in_schema=False)

# The knobs the form offers, each with a line of help; the rest keep LoraTrainConfig's defaults
# and can be set in the YAML the page shows.
KNOBS = [
    ("epochs", "Passes over the dataset.", 1),
    ("learning_rate", "Step size of AdamW; lower it if the loss jumps or diverges.", "any"),
    ("batch_size", "Examples per optimizer step on each process.", 1),
    ("gradient_accumulation", "Micro-batches summed into one step: a larger batch in the same memory.", 1),
    ("rank", "LoRA rank: the adapter's capacity (and size).", 1),
    ("alpha", "LoRA scaling; alpha/rank multiplies the adapter's update.", "any"),
    ("dropout", "Dropout on the LoRA layers while training.", "any"),
    ("max_length", "Longest record in tokens; longer ones are refused, by line.", 1),
    ("warmup_steps", "Steps over which the learning rate rises from zero.", 1),
    ("checkpoint_every", "Steps between checkpoints (a resume starts from the latest).", 1),
    ("eval_every", "Steps between eval-loss measurements (0: each epoch's end).", 1),
    ("early_stopping_patience", "Stop after this many evaluations without a lower eval loss (0: never).", 1),
    ("seed", "Fixes initialisation and data order: the same seed gives the same run.", 1),
]
CHOICES = [
    ("lr_schedule", "How the learning rate falls after warm-up.", ("cosine", "linear", "constant")),
    ("packing", "Short examples share rows (no padding) where the model keeps them apart.", ("auto", "on", "off")),
]


def _knob(name: str, help_text: str, step) -> dict:
    field = LoraTrainConfig.model_fields[name]
    bounds = {type(m).__name__: m for m in field.metadata}
    low = next((getattr(m, a) for m in bounds.values() for a in ("ge", "gt") if hasattr(m, a)), None)
    high = next((getattr(m, a) for m in bounds.values() for a in ("le", "lt") if hasattr(m, a)), None)
    return {"name": name, "help": help_text, "default": field.default, "step": step, "min": low, "max": high}


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(request: Request, airlock: AirlockDep, key: Key = Depends(page("runs:write"))) -> HTMLResponse:
    from airlock.datasets.service import list_datasets
    from airlock.gpus import query
    from airlock.models.catalog import list_base_models

    settings = request.app.state.settings
    gpus = len(query("index"))  # QLoRA needs one; none where nvidia-smi is missing
    return render(request, "new_run.html", key, models=list_base_models(settings),
                  datasets=list_datasets(airlock, reader=reader_of(key)), knobs=[_knob(*k) for k in KNOBS],
                  choices=[{"name": n, "help": h, "options": o, "default": LoraTrainConfig.model_fields[n].default}
                           for n, h, o in CHOICES], gpus=gpus, served_base=settings.serve_base_model)
