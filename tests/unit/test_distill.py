"""Distillation: the explicit early-layer copy, the saved folder, training, resume, metadata and errors.

Everything runs on the tiny random BERT cross-encoder of ``tests/conftest.py`` and an in-test corpus.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ceindex.distill.batches import plan_batches
from ceindex.distill.config import StudentConfig, TrainConfig
from ceindex.distill.init import build_student, save_student
from ceindex.distill.train import META_FILE, WORK, distill
from ceindex.errors import ConfigError, InputError, ModelError
from tests.unit._tiny_models import build_tiny_sentence_transformer

TOPICS = {
    "plant": "plant light sugar energy cell",
    "hole": "black hole star gravity earth",
    "sleep": "brain sleep memory heart",
    "battery": "battery ion carbon energy",
    "volcano": "volcano earth plate water",
    "bee": "bee bird sun plant",
    "oxygen": "oxygen water carbon dioxide",
    "cat": "cat dog bird heart",
}
FILLER = "the a of and to in is are was it for on with as by at from that this be or not".split()


def write_dataset(folder: Path, n_per_topic: int = 5, seed: int = 0) -> Path:
    """A small BEIR folder: per topic ``n_per_topic`` documents and one query per document (train split)."""
    rng = random.Random(seed)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for topic, words in TOPICS.items():
        vocab = words.split()
        for i in range(n_per_topic):
            doc_id, qid = f"{topic}-d{i}", f"{topic}-q{i}"
            body = " ".join(rng.choice(vocab if rng.random() < 0.5 else FILLER) for _ in range(24))
            docs.append({"_id": doc_id, "title": f"{topic} {i}", "text": body})
            queries.append({"_id": qid, "text": f"{topic} " + " ".join(rng.sample(vocab, 2)) + f" {i}"})
            qrels.append(f"{qid}\t{doc_id}\t1")
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries) + "\n", encoding="utf-8")
    (folder / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


def tiny_train(data: Path, **overrides) -> TrainConfig:
    values = dict(data_dir=str(data), epochs=2, batch_size=8, lr=2e-3, warmup=0.0, max_length=48,
                  query_max_length=16, save_max_length=64, teacher=True, teacher_max_length=64,
                  held_out=0.15, patience=5, eval_docs=0, margin_weight=0.1)
    values.update(overrides)
    return TrainConfig(**values)


def load_ce_base(folder: Path) -> torch.nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder)).float()


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("distill-data"))


@pytest.fixture(scope="module")
def trained(tiny_ce_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("distill-run") / "student"
    result = distill(StudentConfig(str(tiny_ce_dir)), tiny_train(dataset), out, teacher_model=str(tiny_ce_dir),
                     progress=False)
    return out, result


# --------------------------------------------------------------------------- the copy
def test_student_copies_embeddings_and_first_layer_only(tiny_ce_dir: Path) -> None:
    student, _, info = build_student(StudentConfig(str(tiny_ce_dir), layers=2, copy=1))
    ce = load_ce_base(tiny_ce_dir)
    for name, tensor in ce.embeddings.state_dict().items():
        assert torch.equal(student.embeddings.state_dict()[name], tensor), name
    for name, tensor in ce.encoder.layer[0].state_dict().items():
        assert torch.equal(student.encoder.layer[0].state_dict()[name], tensor), name
    ours, theirs = student.encoder.layer[1].state_dict(), ce.encoder.layer[1].state_dict()
    weights = [n for n in ours if n.endswith("weight") and "LayerNorm" not in n]
    assert weights and all(not torch.equal(ours[n], theirs[n]) for n in weights)
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert info.copied_layers == [0] and info.random_layers == [1] and info.source_kind == "cross-encoder"
    assert "embeddings.word_embeddings.weight" in info.copied_other


def test_copy_two_layers_and_control_from_a_dual_encoder(tiny_ce_dir: Path, tmp_path: Path) -> None:
    student, _, info = build_student(StudentConfig(str(tiny_ce_dir), layers=2, copy=2))
    ce = load_ce_base(tiny_ce_dir)
    assert info.random_layers == []
    for i in (0, 1):
        for name, tensor in ce.encoder.layer[i].state_dict().items():
            assert torch.equal(student.encoder.layer[i].state_dict()[name], tensor)
    de_dir = build_tiny_sentence_transformer(tmp_path / "de")
    control, _, cinfo = build_student(StudentConfig(str(de_dir), layers=2, copy=1))
    de = load_ce_base(de_dir)
    assert cinfo.source_kind == "dual-encoder"
    assert torch.equal(control.embeddings.word_embeddings.weight, de.embeddings.word_embeddings.weight)
    for name, tensor in de.encoder.layer[0].state_dict().items():
        assert torch.equal(control.encoder.layer[0].state_dict()[name], tensor)
    assert not torch.equal(control.encoder.layer[1].attention.self.query.weight, de.encoder.layer[1].attention.self.query.weight)


def test_saved_student_loads_with_dual_encoder(tiny_ce_dir: Path, tmp_path: Path) -> None:
    from ceindex.models import EncoderConfig, load_encoder

    student, tokenizer, _ = build_student(StudentConfig(str(tiny_ce_dir)))
    folder = save_student(student, tokenizer, tmp_path / "student", max_seq_length=64)
    for name in ("modules.json", "1_Pooling/config.json", "config.json", "model.safetensors", "sentence_bert_config.json"):
        assert (folder / name).is_file(), name
    encoder = load_encoder(EncoderConfig(kind="dual", model=str(folder), device="cpu"))
    vectors = encoder.encode(["plant light sugar", "a black hole is a star"])
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    desc = encoder.describe()
    assert desc.kind == "dual" and desc.pooling == "mean" and desc.max_length == 64


def test_batches_hold_no_conflicting_pairs() -> None:
    triples = [("q1", "d1", "d9"), ("q1", "d2", "d8"), ("q2", "d1", "d7"), ("q3", "d3", "d2"), ("q4", "d4", "d5")]
    relevant = {"q1": {"d1", "d2"}, "q2": {"d1"}, "q3": {"d3"}, "q4": {"d4"}}
    batches = plan_batches(triples, relevant, batch_size=4, seed=1, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for batch in batches:
        qids = [triples[i][0] for i in batch]
        docs = [d for i in batch for d in triples[i][1:]]
        assert len(set(qids)) == len(qids) and len(set(docs)) == len(docs)
        for i in batch:
            others = set(docs) - set(triples[i][1:])
            assert not relevant[triples[i][0]] & others
    assert plan_batches(triples, relevant, 4, 1, 1) == batches  # seeded: a resumed run replays the same order


# --------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_writes_the_record(trained: tuple[Path, object], tiny_ce_dir: Path) -> None:
    from ceindex.models import EncoderConfig, load_encoder

    out, result = trained
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    assert meta == result.metadata
    losses = [e["loss"] for e in meta["epochs"]]
    assert len(losses) == 2 and losses[-1] < losses[0]
    assert all(e["margin_mse_loss"] is not None for e in meta["epochs"])
    assert meta["student"]["copied_layers"] == [0] and meta["student"]["random_layers"] == [1]
    assert meta["student"]["source_kind"] == "cross-encoder" and len(meta["student"]["source_weights_sha256"]) == 64
    assert meta["teacher"]["weights_sha256"] == meta["student"]["source_weights_sha256"]
    data = meta["training_data"]
    assert data["split"] == "train" and data["held_out_queries"] == 6 and data["train_pairs"] == 34
    assert meta["hyper_parameters"]["lr"] == 2e-3 and meta["seed"] == 42
    assert set(meta["held_out_metrics"]) >= {"ndcg@10", "recall@100"} and meta["held_out_before_training"]
    assert meta["best_epoch"] in (1, 2) and meta["wall_time_s"]["total"] >= meta["wall_time_s"]["training_epochs"] > 0
    assert not (out / WORK).exists()
    vectors = load_encoder(EncoderConfig(kind="dual", model=str(out), device="cpu")).encode(["plant sugar"])
    assert abs(float(np.linalg.norm(vectors)) - 1.0) < 1e-5
    again = distill(StudentConfig(str(tiny_ce_dir)), tiny_train(Path(data["data_dir"])), out,
                    teacher_model=str(tiny_ce_dir), progress=False)
    assert again.already_done


def test_resume_after_interruption_continues_from_the_checkpoint(
    trained: tuple[Path, object], tiny_ce_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    student, train = StudentConfig(str(tiny_ce_dir)), tiny_train(dataset)
    first = distill(student, train, out, teacher_model=str(tiny_ce_dir), progress=False, stop_after_epoch=1)
    assert first.metadata == {} and not (out / META_FILE).exists()
    state = json.loads((out / WORK / "state.json").read_text(encoding="utf-8"))
    assert state["epochs_done"] == 1 and (out / WORK / state["checkpoint"] / "trainer.pt").is_file()
    second = distill(student, train, out, teacher_model=str(tiny_ce_dir), progress=False)
    assert second.resumed_from_epoch == 1
    assert [e["epoch"] for e in second.metadata["epochs"]] == [1, 2]
    # the interrupted + resumed run ends where the uninterrupted one did
    straight, resumed = read_weights(trained[0]), read_weights(out)
    for name, tensor in straight.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-5), name
    assert second.metadata["epochs"][-1]["loss"] == pytest.approx(trained[1].metadata["epochs"][-1]["loss"], rel=1e-4)


def test_no_teacher_and_no_held_out_keeps_the_last_epoch(tiny_ce_dir: Path, dataset: Path, tmp_path: Path) -> None:
    train = tiny_train(dataset, epochs=1, teacher=False, held_out=0.0)
    meta = distill(StudentConfig(str(tiny_ce_dir)), train, tmp_path / "s", progress=False).metadata
    assert meta["teacher"] is None and meta["epochs"][0]["margin_mse_loss"] is None
    assert meta["best_epoch"] == 1 and meta["held_out_metrics"] is None and meta["held_out_before_training"] is None
    assert meta["training_data"]["train_pairs"] == 40 and "MarginMSE" not in meta["loss"]


def test_out_dir_with_other_settings_or_foreign_files_is_refused(trained: tuple[Path, object], tiny_ce_dir: Path,
                                                                  dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="different settings.*--restart"):
        distill(StudentConfig(str(tiny_ce_dir)), tiny_train(dataset, lr=1e-3), trained[0],
                teacher_model=str(tiny_ce_dir), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError, match="not empty"):
        distill(StudentConfig(str(tiny_ce_dir)), tiny_train(dataset), foreign, teacher_model=str(tiny_ce_dir))


# --------------------------------------------------------------------------- errors
def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="--copy 3 is more than --layers 2"):
        StudentConfig("ce", layers=2, copy=3)
    with pytest.raises(ConfigError, match="--layers must be >= 1"):
        StudentConfig("ce", layers=0, copy=0)
    with pytest.raises(ConfigError, match="--held-out"):
        TrainConfig(data_dir=".", held_out=0.9)
    assert TrainConfig(data_dir=".", max_length=96).saved_max_length == 96  # never longer than trained on


def test_model_and_data_errors(tiny_ce_dir: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        build_student(StudentConfig(str(tmp_path / "nope")))
    with pytest.raises(ModelError, match="beyond the depth.*3 transformer layers"):
        build_student(StudentConfig(str(tiny_ce_dir), layers=5, copy=4))
    with pytest.raises(InputError, match="available splits: train"):
        distill(StudentConfig(str(tiny_ce_dir)), tiny_train(dataset, split="test"), tmp_path / "o",
                teacher_model=str(tiny_ce_dir))


def test_cli_reports_bad_input(tiny_ce_dir: Path, dataset: Path, tmp_path: Path, ceindex_home: Path) -> None:
    from ceindex.commands.distill import distill_command

    runner = CliRunner()
    base = ["--data", str(dataset), "--out", str(tmp_path / "out")]
    cases = [
        (["--model", str(tmp_path / "missing")], ModelError, "does not exist"),
        (["--model", str(tiny_ce_dir), "--layers", "1", "--copy", "2"], ConfigError, "more than --layers"),
        (["--model", str(tiny_ce_dir), "--layers", "6", "--copy", "4"], ModelError, "beyond the depth"),
        (["--model", str(tiny_ce_dir), "--split", "dev"], InputError, "available splits"),
    ]
    for extra, error, message in cases:
        result = runner.invoke(distill_command, base + extra)
        assert isinstance(result.exception, error), (extra, result.output, result.exception)
        assert message in str(result.exception)
    assert "--init-from" in runner.invoke(distill_command, ["--help"]).output
