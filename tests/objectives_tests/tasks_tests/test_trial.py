"""What one trial measures: cost metrics, once per architecture and hardware."""

from pathlib import Path

import torch

from objectives import (
    DataArgs,
    StudentArgs,
    build_student,
    cost_hardware,
    load_classifier,
    measure_cost,
    prepare_workload,
)


def test_cost_is_measured_once_per_architecture_and_reused() -> None:
    work = prepare_workload(DataArgs(max_train_rows=32, max_val_rows=24, max_length=24), "minilm-l6")
    teacher = load_classifier("minilm-l6", 2)
    torch.manual_seed(0)
    first = measure_cost(build_student(teacher, StudentArgs(num_layers=2), dropout=0.1), work)
    torch.manual_seed(1)  # other weights and dropout, same architecture: the same measured numbers, reused
    again = measure_cost(build_student(teacher, StudentArgs(layers=[1, 4]), dropout=0.3), work)
    assert again == first and first["latency_ms"] > 0
    torch.set_num_threads(2)  # what the worker trains with; costs are measured with COST_THREADS, then it is back
    deeper = measure_cost(build_student(teacher, StudentArgs(num_layers=3)), work)
    assert deeper["params"] > first["params"] and deeper["latency_ms"] != first["latency_ms"]
    assert torch.get_num_threads() == 2
    # with the teacher: its speedup over it too, under another key (the teacher is part of it), then reused
    timed = measure_cost(build_student(teacher, StudentArgs(num_layers=2)), work, teacher=(teacher, work))
    assert "speedup" not in first and 1.5 < timed["speedup"] < 6  # 2 of MiniLM's 6 layers (the embeddings stay)
    assert measure_cost(build_student(teacher, StudentArgs(layers=[0, 5])), work, teacher=(teacher, work)) == timed


def test_a_cost_store_keeps_the_first_measurement_under_a_key_naming_the_hardware() -> None:
    work = prepare_workload(DataArgs(max_train_rows=32, max_val_rows=24, max_length=24), "minilm-l6")
    model = build_student(load_classifier("minilm-l6", 2), StudentArgs(num_layers=1))
    store: dict[str, dict[str, float]] = {}
    first = measure_cost(model, work, store)
    assert list(store.values()) == [first]
    # a value another worker stored first under the same key is what this one reports, without measuring
    (key,) = store
    store[key] = {**first, "latency_ms": 123.0}
    assert measure_cost(model, work, store)["latency_ms"] == 123.0
    assert measure_cost(model, work)["latency_ms"] != 123.0  # this process's own store is another one
    cpu = cost_hardware(torch.device("cpu"))
    assert cpu.endswith(", 1 thread")  # COST_THREADS, whatever the process trains with
    model_name = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    assert cpu.startswith(model_name[0].split(":", 1)[1].strip())


def test_balanced_class_weights_reach_the_loss_and_scores_come_per_named_class(tmp_path: Path) -> None:
    from transformers import AutoConfig

    from objectives import TeacherArgs, TrainArgs, finetune_student, finetune_teacher

    csv_path = tmp_path / "q.csv"  # 3 classes with integer labels; class 2 is rare
    csv_path.write_text("text,label\n" + "".join(f"question {i},{2 if i % 10 == 0 else i % 2}\n" for i in range(80)))
    data = DataArgs(name=str(csv_path), label_names=["no", "yes", "maybe"], max_length=16)
    work = prepare_workload(data, "minilm-l6")
    counts = torch.bincount(torch.tensor(work.train.labels), minlength=3).float()
    weights = work.class_weights(TrainArgs(class_weights="balanced"))["weight"]
    assert torch.allclose(weights, len(work.train) / (3 * counts))  # w_c = N / (C * n_c) of the training split
    assert work.class_weights(TrainArgs()) == {}
    results = {}
    for choice in ("none", "balanced"):
        args = TrainArgs(max_steps=2, batch_size=8, eval_every=2, lr=1e-3, class_weights=choice)
        _, results[choice] = finetune_student(work, "minilm-l6", StudentArgs(num_layers=1), args, seed=0)
    assert results["none"]["val_loss"] != results["balanced"]["val_loss"]  # same seed: only the weights differ
    scores = results["balanced"]["per_class"]
    assert list(scores) == ["no", "yes", "maybe"]
    assert sum(s["support"] for s in scores.values()) == sum(s["predicted"] for s in scores.values()) == 8
    # The teacher is saved with the class names: its config.json maps ids to them.
    teacher = finetune_teacher(work, TeacherArgs(train=TrainArgs(max_steps=1, batch_size=8)), 0, tmp_path / "t")
    assert AutoConfig.from_pretrained(tmp_path / "t").id2label == {0: "no", 1: "yes", 2: "maybe"}
    assert list(teacher["per_class"]) == ["no", "yes", "maybe"]
