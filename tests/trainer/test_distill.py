"""Knowledge distillation (``method.objective: distill``): a frozen teacher's token distributions mixed
with the label loss when the tokenizers share their vocabulary (logits), the teacher's answers to the
training prompts learned when they do not (sequence); the teacher and how it taught in the lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kubetune.api.v1alpha1 import DistillMode, ResolvedDistillObjective
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.loading import model_checksum
from kubetune_trainer.plan import DEFAULTS, resolve_training
from kubetune_trainer.tensors.encode import encode_example
from kubetune_trainer.tensors.positions import labelled_positions
from kubetune_trainer.training.distill import distill_loss_sums
from tests.builders import spec
from tests.trainer.jobs import write_dataset, write_job
from tests.trainer.plans import CPU, NO_REPLAY, SMOL

TEACHER = "file:///models/teacher"


def objective_for(distill: dict[str, object], same_vocabulary: bool | None) -> ResolvedDistillObjective:
    manifest = spec(method={"objective": "distill", "distill": {"teacher": TEACHER, **distill}})
    resolved = resolve_training(
        manifest,
        CPU,
        train_examples=24,
        token_lengths=[16] * 24,
        shape=SMOL,
        replay=NO_REPLAY,
        same_vocabulary=same_vocabulary,
    )
    assert isinstance(resolved.objective, ResolvedDistillObjective)
    return resolved.objective


def test_the_plan_resolves_the_mode_from_the_vocabularies_and_states_every_default() -> None:
    shared = objective_for({}, same_vocabulary=True)
    assert (shared.mode, shared.temperature, shared.alpha, shared.teacher) == (
        DistillMode.LOGITS,
        DEFAULTS.distill_temperature,
        DEFAULTS.distill_alpha,
        TEACHER,
    )
    assert objective_for({}, same_vocabulary=False).mode == DistillMode.SEQUENCE
    chosen = objective_for({"mode": "sequence", "temperature": 4.0, "alpha": 0.0}, same_vocabulary=True)
    assert (chosen.mode, chosen.temperature, chosen.alpha) == (DistillMode.SEQUENCE, 4.0, 0.0)
    with pytest.raises(ConfigurationError, match=r"spec\.method\.distill\.mode: logits .* different vocabularies"):
        objective_for({"mode": "logits"}, same_vocabulary=False)


def test_the_loss_is_the_temperature_scaled_kl_to_the_teacher_and_the_label_cross_entropy() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 11), torch.randn(5, 13)  # the teacher's head padded past the shared ids
    targets = torch.randint(0, 11, (5,))
    kl, ce = distill_loss_sums(student, teacher, targets, temperature=2.0)
    p_teacher = torch.softmax(teacher[:, :11] / 2, dim=-1)
    expected = (p_teacher * (p_teacher.log() - torch.log_softmax(student / 2, dim=-1))).sum() * 4
    assert torch.allclose(kl, expected, atol=1e-5)
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(student, targets, reduction="sum"))
    same, _ = distill_loss_sums(teacher[:, :11], teacher[:, :11], targets, temperature=2.0)
    assert abs(float(same)) < 1e-5


def run_in_process(job: Path, folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path | None]:
    """``kubetune run`` in this process (the ML imports already paid for: a subprocess adds ~10 s on 2
    cores): the exit code, what it said and, when it published, the version's lineage manifest."""
    args = ["run", str(job), "--output-dir", str(folder / "runs"), "--workdir", str(folder / "work")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_locally's OMP_NUM_THREADS=1: tiny matrices only lose to thread hand-offs
    try:
        code = kubetune(args)
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    manifests = sorted((folder / "runs").glob("*/v*/manifest.json"))
    return code, out + err, manifests[0] if manifests else None


def _peaked_teacher(tiny_model_dir: Path, folder: Path) -> Path:
    """A teacher with the student's tokenizer, another initialisation and sharp distributions."""
    import shutil

    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    teacher.apply(teacher._init_weights)
    with torch.no_grad():
        teacher.model.norm.weight.mul_(8.0)
    teacher.save_pretrained(folder, safe_serialization=True)
    for item in tiny_model_dir.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", "config.json")):
            shutil.copy(item, folder / item.name)
    return folder


def _kl_to_teacher(student_dir: Path, teacher_dir: Path, rows: list[Example]) -> float:
    """Mean KL(teacher || student) at temperature 1 over the answer tokens of ``rows``, as training encodes them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            encoded = encode_example(row, tokenizer, 64)
            ids, labels = torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])
            keep, _ = labelled_positions(labels)
            s = torch.log_softmax(student(ids).logits[keep].float(), dim=-1)
            t = torch.log_softmax(teacher(ids).logits[keep].float(), dim=-1)
            total += float((t.exp() * (t - s)).sum())
            tokens += int(keep.sum())
    return total / tokens


def test_logit_distillation_pulls_the_student_to_the_teacher_and_the_lineage_records_it(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    teacher_dir = _peaked_teacher(tiny_model_dir, tmp_path / "teacher")
    data = write_dataset(tmp_path / "data.jsonl", count=20)
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path / 'out'}",
        method={
            "type": "full",
            "objective": "distill",
            "distill": {"teacher": f"file://{teacher_dir}", "alpha": 0.9, "temperature": 1.0},
        },
        hyperparameters={"learningRate": 0.003, "packing": True, "gradientAccumulationSteps": 1},
    )
    manifest = yaml.safe_load(job.read_text())
    del manifest["spec"]["method"]["lora"]  # a full fine-tune: every weight can move towards the teacher
    manifest["spec"]["output"]["formats"] = ["merged"]
    job.write_text(yaml.safe_dump(manifest))
    code, said, manifest_path = run_in_process(job, tmp_path, capsys)
    assert code == 0 and manifest_path is not None, said[-3000:]
    manifest = json.loads(manifest_path.read_text())

    assert manifest["resolved"]["objective"] == {
        "type": "distill",
        "teacher": f"file://{teacher_dir}",
        "mode": "logits",
        "temperature": 1.0,
        "alpha": 0.9,
    }
    assert manifest["distill"] == {
        "teacher": {"uri": f"file://{teacher_dir}", "sha256": model_checksum(teacher_dir)},
        "mode": "logits",
        "temperature": 1.0,
        "alpha": 0.9,
    }
    rows = [
        Example(messages=tuple(Message(m["role"], m["content"]) for m in json.loads(line)["messages"]))
        for line in data.read_text().splitlines()[:8]
    ]
    before = _kl_to_teacher(tiny_model_dir, teacher_dir, rows)
    after = _kl_to_teacher(manifest_path.parent / "merged", teacher_dir, rows)
    assert after < 0.8 * before, (before, after)


def _teacher_with_its_own_tokenizer(folder: Path, texts: list[str]) -> Path:
    """A tiny Llama teacher whose tokenizer (byte-level BPE, a few hundred ids) is trained here: no id of
    it means what the student's does, so only sequence-level distillation can pass its knowledge."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def _answer_nll(model_dir: Path, tokenizer_dir: Path, rows: list[Example]) -> float:
    """Mean negative log-likelihood per answer token of ``rows`` under the model, as training encodes them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            encoded = encode_example(row, tokenizer, 64)
            ids, labels = torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])
            keep, targets = labelled_positions(labels)
            logits = model(ids).logits[keep].float()
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            tokens += int(targets.numel())
    return total / tokens


def test_teacher_answers_are_cached_by_teacher_and_prompts(tmp_path: Path) -> None:
    from kubetune_trainer.distill_answers import teacher_answers

    rows = [Example(messages=(Message("user", f"q{i}"), Message("assistant", "dataset answer"))) for i in range(3)]
    asked: list[int] = []

    def answer(prompts: object) -> list[str]:
        assert isinstance(prompts, list)
        asked.append(len(prompts))
        return [f"teacher says {i}" for i in range(len(prompts))]

    def answered(teacher: str, examples: list[Example]) -> list[str]:
        result = teacher_answers(
            examples, teacher_sha256=teacher, template="t", cache_dir=tmp_path, max_new_tokens=8, answer=answer
        )
        return [row.reference() for row in result.rows]

    assert answered("a", rows) == ["teacher says 0", "teacher says 1", "teacher says 2"]
    assert answered("a", rows) == ["teacher says 0", "teacher says 1", "teacher says 2"] and asked == [3]
    answered("b", rows)  # another teacher
    answered("a", rows[:2])  # other prompts
    assert asked == [3, 3, 2]
    with pytest.raises(ConfigurationError, match=r"spec\.method\.distill\.mode: .* row 0 has none"):
        answered("a", [Example(text="plain text")])


def test_sequence_distillation_trains_on_the_answers_of_a_teacher_with_another_tokenizer(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", count=20)
    texts = [m["content"] for line in data.read_text().splitlines() for m in json.loads(line)["messages"]]
    teacher_dir = _teacher_with_its_own_tokenizer(tmp_path / "teacher", texts)
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path / 'out'}",
        method={"type": "full", "objective": "distill", "distill": {"teacher": f"file://{teacher_dir}"}},
        hyperparameters={"learningRate": 0.01, "gradientAccumulationSteps": 1},
    )
    manifest = yaml.safe_load(job.read_text())
    del manifest["spec"]["method"]["lora"]
    manifest["spec"]["output"]["formats"] = ["merged"]
    job.write_text(yaml.safe_dump(manifest))
    code, said, manifest_path = run_in_process(job, tmp_path, capsys)
    assert code == 0 and manifest_path is not None, said[-3000:]
    lineage = json.loads(manifest_path.read_text())

    assert lineage["resolved"]["objective"]["mode"] == "sequence", "auto: the vocabularies differ"
    published = manifest_path.parent / "distill" / "teacher-answers.jsonl"
    answers = [json.loads(line) for line in published.read_text().splitlines()]
    record = lineage["distill"]
    assert record["teacher"] == {"uri": f"file://{teacher_dir}", "sha256": model_checksum(teacher_dir)}
    assert record["teacherAnswers"]["rows"] == len(answers) == lineage["dataset"]["splits"]["train"]
    (cached,) = (tmp_path / "work" / "distill-answers").glob("*.jsonl")
    assert cached.read_bytes() == published.read_bytes()
    artifact = {a["path"]: a["sha256"] for a in lineage["artifacts"]}
    assert artifact["distill/teacher-answers.jsonl"] == record["teacherAnswers"]["sha256"]

    # The answers are the teacher's own greedy ones, decoded with its tokenizer...
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    first = answers[0]
    ids = teacher_tokenizer.apply_chat_template(first["prompt"], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    out = teacher.generate(ids, max_new_tokens=DEFAULTS.distill_max_new_tokens, do_sample=False)
    assert teacher_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip() == first["answer"].strip()
    assert all(a["answer"] != "shipping" and a["answer"] != "returns" for a in answers)
    # ...and the student learned them.
    rows = [
        Example(messages=(*(Message(m["role"], m["content"]) for m in a["prompt"]), Message("assistant", a["answer"])))
        for a in answers[:8]
    ]
    before = _answer_nll(tiny_model_dir, tiny_model_dir, rows)
    after = _answer_nll(manifest_path.parent / "merged", tiny_model_dir, rows)
    assert after < 0.8 * before, (before, after)


def test_a_published_version_teacher_is_its_checked_merged_weights_and_a_bad_teacher_is_refused_at_the_field(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import shutil

    from kubetune_trainer.models.teacher import resolve_teacher
    from kubetune_trainer.publish import publish_run
    from kubetune_trainer.storage import ObjectStore

    store = ObjectStore()
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_model_dir, artifacts / "merged")
    manifest = {"baseModel": {"uri": f"file://{tiny_model_dir}"}, "resolved": {"method": "full", "adapter": "none"}}
    published = publish_run(artifacts, f"file://{tmp_path / 'out'}", store, manifest)

    teacher = resolve_teacher(published.version_uri, store)
    assert teacher.sha256 == model_checksum(tiny_model_dir)
    assert teacher.version is not None and teacher.version["version"] == published.version
    assert teacher.lineage()["version"]["uri"] == published.version_uri

    version_dir = Path(published.version_uri.removeprefix("file://"))
    with (version_dir / "merged" / "config.json").open("a") as handle:
        handle.write(" ")  # damage: the version's files no longer match its manifest
    with pytest.raises(ConfigurationError, match=r"^spec\.method\.distill\.teacher: .* differs from its manifest"):
        resolve_teacher(published.version_uri, store)
    with pytest.raises(ConfigurationError, match=r"^spec\.method\.distill\.teacher: .*no config\.json.*published"):
        resolve_teacher(f"file://{tmp_path}", store)


def test_the_pre_flight_counts_the_teacher() -> None:
    """Logit distillation holds the teacher beside the student and runs its forward on every row; sequence
    distillation first generates an answer to every training prompt (in the pre-flight pod, not yet)."""
    from kubetune_trainer.plan import preflight_estimate

    def estimate(same_vocabulary: bool, teacher_answers: int = 0) -> tuple[float, float]:
        manifest = spec(method={"objective": "distill", "distill": {"teacher": TEACHER}})
        plan = resolve_training(
            manifest,
            CPU,
            train_examples=200,
            token_lengths=[64] * 200,
            shape=SMOL,
            replay=NO_REPLAY,
            same_vocabulary=same_vocabulary,
        )
        report = preflight_estimate(
            plan,
            SMOL,
            CPU,
            train_tokens=12_800,
            total_memory_limit_gib=None,
            teacher=SMOL,
            teacher_answers=teacher_answers,
        )
        return report.estimated_memory_gib or 0.0, report.estimated_minutes or 0.0

    logits, sequence, answering = estimate(True), estimate(False), estimate(False, teacher_answers=200)
    assert logits[0] > sequence[0] + SMOL.params * 4 / 2**30, (logits, sequence)  # a second fp32 model held
    assert logits[1] > sequence[1], (logits, sequence)
    assert answering[1] > sequence[1] and answering[0] == sequence[0], (answering, sequence)


def test_kubetune_run_refuses_a_teacher_it_cannot_use_at_the_field_without_a_traceback(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", count=20)
    foreign = _teacher_with_its_own_tokenizer(tmp_path / "foreign", ["a few words to learn from", "and a few more"])
    (tmp_path / "empty").mkdir()
    for teacher, mode, field in (
        (tmp_path / "empty", "auto", "spec.method.distill.teacher"),
        (foreign, "logits", "spec.method.distill.mode"),
    ):
        job = write_job(
            tmp_path / "job.yaml",
            model_dir=tiny_model_dir,
            data=data,
            output=f"file://{tmp_path / 'out'}",
            method={"objective": "distill", "distill": {"teacher": f"file://{teacher}", "mode": mode}},
        )
        code, said, manifest_path = run_in_process(job, tmp_path / mode, capsys)
        assert code == 2 and manifest_path is None, said[-2000:]
        assert f"error: {field}: " in said and "Traceback" not in said, said[-2000:]
