"""Evaluation through the engine gives the in-process evaluation's scores.

The session's real vLLM serves the reference model and a LoRA adapter trained here on the
quickstart's facts (and a weaker one as champion); `compare_through_engine` must give the same
answers, the same matches and the same losses as `evaluate.compare` on the same eval set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airlock.config import REPO_ROOT
from airlock.errors import InvalidInput, NotFound, NotReady
from airlock.promotion import engine_eval
from airlock.promotion.engine_eval import compare_through_engine, score_through_engine
from airlock.promotion.evaluate import compare
from airlock.serve.engine import read_secret
from airlock.train.base import load_base
from airlock.train.config import LoraTrainConfig
from airlock.train.recipe import finetune

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

DATASETS = REPO_ROOT / "examples" / "datasets"
MAX_LENGTH = 512
CANDIDATE, CHAMPION = "engine-eval-candidate", "engine-eval-champion"  # no other test loads these names
# Losses: both sides compute float32 logits with the same weights; the engine path computes them
# for the whole set in one padded batch, the in-process loop one example at a time, and matrix
# products of other shapes round differently (logits differ by up to 5e-6). Measured on this set:
# at most 1.7e-6 relative (the largest on a loss of 0.0095); 1e-5 leaves room for other CPUs'
# kernels and still catches any real difference (a token more or less in the mean moves a loss
# by a percent or more, a wrong adapter by orders of magnitude).
LOSS_RTOL = 1e-5


def records(name: str) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in (DATASETS / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def adapters(vllm_server, tmp_path_factory) -> dict[str, Path]:
    """A candidate that learned the quickstart's facts (its recipe) and a champion trained a
    tenth as long, both loaded into the session's engine."""
    root = tmp_path_factory.mktemp("engine-eval")
    train = records("quickstart.jsonl")
    recipe = LoraTrainConfig(epochs=40, rank=8, alpha=16, learning_rate=0.01, batch_size=1, seed=0)
    folders = {CANDIDATE: finetune(vllm_server.model_dir, train, recipe, root / "candidate").adapter_dir,
               CHAMPION: finetune(vllm_server.model_dir, train, recipe.model_copy(update={"epochs": 4}),
                                  root / "champion").adapter_dir}
    for name, folder in folders.items():
        vllm_server.load_adapter(name, folder)
    yield folders
    for name in folders:
        vllm_server.unload_adapter(name)


def engine_of(vllm_server) -> dict:
    """Where the session's engine listens and the secret it wants, as the gate hands them over."""
    settings = vllm_server.settings
    return {"base_url": settings.vllm_url, "headers": {"Authorization": f"Bearer {read_secret(settings)}"},
            "socket": settings.engine_socket}


def test_engine_scores_equal_the_in_process_scores(vllm_server, adapters):
    evals = records("quickstart-eval.jsonl")
    expected = compare(vllm_server.model_dir, adapters[CANDIDATE], evals, MAX_LENGTH, champion_dir=adapters[CHAMPION])
    got = compare_through_engine(**engine_of(vllm_server), base_dir=vllm_server.model_dir,
                                 adapter_dir=adapters[CANDIDATE], records=evals, max_length=MAX_LENGTH,
                                 base_model=vllm_server.served_name, candidate=CANDIDATE,
                                 champion_dir=adapters[CHAMPION], champion=CHAMPION)
    assert set(got) == set(expected) == {"base", "candidate", "champion"}
    for role in expected:
        mine, theirs = got[role], expected[role]
        assert mine.examples == theirs.examples == len(evals)
        for n, (a, b) in enumerate(zip(mine.answers, theirs.answers), start=1):
            assert set(a) == set(b) == {"prompt", "reference", "answer", "loss", "match", "contains"}
            assert {k: a[k] for k in a if k != "loss"} == {k: b[k] for k in b if k != "loss"}, (role, n)
            assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), (role, n)
        assert (mine.exact_match, mine.contains) == (theirs.exact_match, theirs.contains), role
        assert mine.loss == pytest.approx(theirs.loss, rel=LOSS_RTOL), role
    # The reference model's golden figures: the candidate answers every fact verbatim, the base
    # none, the champion's losses lie between (it learned, but less).
    assert (got["candidate"].exact_match, got["base"].exact_match) == (1.0, 0.0)
    assert got["candidate"].loss < got["champion"].loss < got["base"].loss


def test_an_unknown_model_is_named_in_the_error(vllm_server):
    tokenizer, model = load_base(vllm_server.model_dir)
    with pytest.raises(NotFound, match="'no-such-adapter'"):
        score_through_engine(**engine_of(vllm_server), served_name="no-such-adapter", tokenizer=tokenizer,
                             records=records("quickstart-eval.jsonl")[:2], max_length=MAX_LENGTH, loss_model=model)


def test_a_stale_secret_is_refused_and_named_with_the_model(vllm_server):
    """An engine that restarted has a new secret: the old one is refused, not taken for a bad example."""
    tokenizer, model = load_base(vllm_server.model_dir)
    engine = engine_of(vllm_server) | {"headers": {"Authorization": "Bearer not-the-secret"}}
    with pytest.raises(NotReady, match=rf"refused the secret sent with model '{vllm_server.served_name}'"):
        score_through_engine(**engine, served_name=vllm_server.served_name, tokenizer=tokenizer,
                             records=records("quickstart-eval.jsonl")[:2], max_length=MAX_LENGTH, loss_model=model)


def test_an_example_the_engine_refuses_is_named_with_the_model(vllm_server, adapters, monkeypatch):
    """The engine's context is 512 tokens: a reference of about 600 asks for more room to answer
    than it has. Requests of two prompts: the second request is refused, and the error names
    the record in it the engine refuses on its own (the third) and the model."""
    monkeypatch.setattr(engine_eval, "BATCH", 2)
    evals = records("quickstart-eval.jsonl")[:4]
    evals[2] = evals[2][:-1] + [{"role": "assistant", "content": "Ed25519 " * 300}]
    tokenizer, model = load_base(vllm_server.model_dir)
    with pytest.raises(InvalidInput, match=rf"eval record 3 for model '{CANDIDATE}'.*512") as caught:
        score_through_engine(**engine_of(vllm_server), served_name=CANDIDATE, tokenizer=tokenizer, records=evals,
                             max_length=4096, loss_model=model)
    assert "eval records" not in str(caught.value)


def test_an_unreachable_engine_is_named_with_the_model(tmp_path):
    tokenizer, model = load_base(REPO_ROOT / "offline_models" / "airlock-tiny")
    with pytest.raises(NotReady, match=rf"model 'some-adapter'.*{re.escape(str(tmp_path))}"):
        score_through_engine("http://engine", {}, "some-adapter", tokenizer, records("quickstart-eval.jsonl")[:2],
                             MAX_LENGTH, model, socket=tmp_path / "gone.sock")
