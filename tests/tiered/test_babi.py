"""The bAbI loader on small files in the standard format, written here (the project never
needs the real data)."""

from __future__ import annotations

import tarfile
import zipfile

import pytest
import torch

from tiered.tasks import BAbI
from tiered.tasks.babi import ANSWER, PAD, parse_stories, read_files, tokenize

TASK1_TRAIN = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the kitchen.
5 Where is Daniel? \tkitchen\t4
1 Sandra journeyed to the kitchen.
2 Where is Sandra? \tkitchen\t1
1 John went to the garden.
2 Where is John? \tgarden\t1
"""
TASK1_TEST = """1 Mary went to the kitchen.
2 Where is Mary? \tkitchen\t1
1 John went to the office.
2 Where is John? \toffice\t1
"""
TASK8_TRAIN = """1 Mary got the apple there.
2 Mary took the football there.
3 What is Mary carrying?\tapple,football\t1 2
1 John picked up the milk there.
2 What is John carrying?\tmilk\t1
"""
TASK8_TEST = """1 Sandra got the apple there.
2 What is Sandra carrying?\tapple\t1
"""
FILES = {
    "qa1_single-supporting-fact_train.txt": TASK1_TRAIN,
    "qa1_single-supporting-fact_test.txt": TASK1_TEST,
    "qa8_lists-sets_train.txt": TASK8_TRAIN,
    "qa8_lists-sets_test.txt": TASK8_TEST,
}


def write_folder(root, subset="en"):
    folder = root / "tasks_1-20_v1-2" / subset
    folder.mkdir(parents=True)
    for name, text in FILES.items():
        (folder / name).write_text(text)
    return root


def test_tokenize_lowers_and_strips_punctuation():
    assert tokenize("Where is Mary? ") == ["where", "is", "mary"]
    assert tokenize("Mary moved to the bathroom.") == ["mary", "moved", "to", "the", "bathroom"]


def test_stories_restart_at_line_one_and_questions_carry_their_answers():
    stories = parse_stories(TASK1_TRAIN, 1)
    assert [len(s.lines) for s in stories] == [5, 2, 2]
    question = stories[0].lines[2]
    assert question.words == ["where", "is", "mary"] and question.answer == ["bathroom"]
    (story, _) = parse_stories(TASK8_TRAIN, 8)
    assert story.lines[2].answer == ["apple", "football"]  # a list answer, word by word


def test_a_malformed_line_names_the_source_the_line_and_the_text():
    with pytest.raises(ValueError, match=r"qa9 train, line 2: expected '<id> <text>'"):
        parse_stories("1 Mary went home.\nMary went home.\n", 9, "qa9 train")
    with pytest.raises(ValueError, match=r"line 1: a question needs words and an answer"):
        parse_stories("1 Where is Mary?\t\t1\n", 1, "qa1")


def test_a_folder_a_zip_and_a_tar_gz_read_the_same(tmp_path):
    folder = write_folder(tmp_path / "folder")
    zipped = tmp_path / "babi.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for name, text in FILES.items():
            archive.writestr(f"tasks_1-20_v1-2/en/{name}", text)
            archive.writestr(f"__MACOSX/tasks_1-20_v1-2/en/._{name}", "junk")  # skipped
            archive.writestr(f"tasks_1-20_v1-2/en-10k/{name}", text + text)  # other subset
    tarred = tmp_path / "babi.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:
        archive.add(folder / "tasks_1-20_v1-2", arcname="tasks_1-20_v1-2")
    expected = {(1, "train"): TASK1_TRAIN, (1, "test"): TASK1_TEST,
                (8, "train"): TASK8_TRAIN, (8, "test"): TASK8_TEST}  # fmt: skip
    assert read_files(folder) == expected
    assert read_files(zipped) == expected
    assert read_files(tarred) == expected
    assert read_files(zipped, subset="en-10k")[(1, "train")] == TASK1_TRAIN * 2
    with pytest.raises(ValueError, match="appears twice"):
        read_files(zipped, subset=None)


def test_missing_paths_tasks_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no qa<N>_<name>_<train|test>.txt file"):
        read_files(tmp_path / "empty")
    write_folder(tmp_path / "data")
    with pytest.raises(ValueError, match=r"tasks \[3\] have no train and test file.*\[1, 8\]"):
        BAbI(str(tmp_path / "data"), tasks=[3])
    with pytest.raises(ValueError, match="val_fraction must be in"):
        BAbI(str(tmp_path / "data"), val_fraction=1.0)


def test_a_story_is_one_sequence_with_each_question_answered_in_place(tmp_path):
    task = BAbI(str(write_folder(tmp_path)), tasks=[1, 8], val_fraction=0.0, batch_size=2)
    vocab = task.vocabulary
    assert vocab[:2] == [PAD, ANSWER] and "bathroom" in vocab and "football" in vocab
    assert task.input_size == task.output_size == len(vocab)
    assert task.loss == "tokens"
    story = task.stories["train"][3]  # task 8's first story: a two-word answer
    encoded = task.encode(story)
    words = [vocab[i] for i in encoded.inputs]
    assert words[-6:] == ["what", "is", "mary", "carrying", ANSWER, ANSWER]
    assert [vocab[i] for i in encoded.targets[encoded.mask]] == ["apple", "football"]
    assert (encoded.targets[~encoded.mask] == 0).all()  # unscored steps have no class
    batch = task.make_batch("train", 0)
    assert batch.inputs.shape[-1] == len(vocab) and batch.targets.dtype == torch.int64
    assert torch.equal(batch.inputs.sum(-1)[batch.steps], torch.ones(int(batch.steps.sum())))


def test_validation_holds_out_stories_and_test_visits_each_once(tmp_path):
    task = BAbI(str(write_folder(tmp_path)), tasks=[1], val_fraction=0.34, batch_size=2)
    assert len(task.stories["val"]) == 1 and len(task.stories["train"]) == 2
    assert task.batches["test"] == 1 and task.batches["val"] == 1
    scored = sum(int(task.make_batch("test", i).mask.sum()) for i in range(task.batches["test"]))
    assert scored == 2  # the test file's two questions, once each
    again = BAbI(str(write_folder(tmp_path / "again")), tasks=[1], val_fraction=0.34, batch_size=2)
    assert again.stories["val"] == task.stories["val"]  # the split follows the seed


def test_task_errors_count_a_question_wrong_when_any_answer_word_is_wrong(tmp_path):
    task = BAbI(str(write_folder(tmp_path)), tasks=[1, 8], val_fraction=0.0, batch_size=3)
    apple, kitchen = task.index["apple"], task.index["kitchen"]

    def always(word):
        def predict(inputs):
            scores = torch.zeros(*inputs.shape[:2], task.output_size)
            scores[..., word] = 1.0
            return scores

        return predict

    # Test answers: task 1 "kitchen", "office"; task 8 "apple".
    assert task.task_errors(always(kitchen)) == {1: 0.5, 8: 1.0}
    assert task.task_errors(always(apple)) == {1: 1.0, 8: 0.0}
    # Training split: task 8 has "apple,football" (one word wrong: wrong) and "milk".
    assert task.task_errors(always(apple), split="train")[8] == 1.0


def test_a_tiered_model_trains_on_babi_through_the_cli(tmp_path):
    from pathlib import Path

    from tiered.cli import make_cli

    data = write_folder(tmp_path / "data")
    stack = Path(__file__).resolve().parents[2] / "experiments" / "stacks" / "ram.yaml"
    args = ["--config", str(stack), "--data", "tiered.tasks.BAbI",
            "--data.path", str(data), "--data.batch_size", "2", "--data.val_fraction", "0.34",
            "--trainer.max_steps", "3", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
    cli = make_cli(args, run=False)
    assert cli.model.controller.input_size == cli.datamodule.input_size
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    errors = cli.datamodule.task_errors(lambda x: cli.model.controller(x).output)
    assert set(errors) == {1, 8} and all(0 <= e <= 1 for e in errors.values())


def test_uneven_batches_still_visit_every_test_story_once(tmp_path):
    folder = tmp_path / "en"
    folder.mkdir()
    three = TASK1_TEST + "1 Sandra went to the garden.\n2 Where is Sandra? \tgarden\t1\n"
    (folder / "qa1_x_train.txt").write_text(TASK1_TRAIN)
    (folder / "qa1_x_test.txt").write_text(three)
    task = BAbI(str(tmp_path), val_fraction=0.0, batch_size=2)
    assert task.batches["test"] == 2
    batches = [task.make_batch("test", i) for i in range(2)]
    assert [b.inputs.shape[0] for b in batches] == [2, 1]
    vocab = task.vocabulary
    answers = [vocab[int(t)] for b in batches for t in b.targets[b.mask]]
    assert answers == ["kitchen", "office", "garden"]
    # no validation stories: an empty validation loader, not a crash
    assert task.batches["val"] == 0 and list(task.val_dataloader()) == []


def test_punctuation_can_be_kept_as_words(tmp_path):
    assert tokenize("Where is Mary?", keep_punctuation=True) == ["where", "is", "mary", "?"]
    task = BAbI(str(write_folder(tmp_path)), tasks=[1], keep_punctuation=True, val_fraction=0.0)
    assert "." in task.vocabulary and "?" in task.vocabulary
    words = [task.vocabulary[i] for i in task.encode(task.stories["test"][0]).inputs]
    expected = ["mary", "went", "to", "the", "kitchen", ".", "where", "is", "mary", "?"]
    assert words == [*expected, ANSWER]


def test_batch_by_task_draws_each_training_batch_from_one_task(tmp_path):
    task = BAbI(str(write_folder(tmp_path)), tasks=[1, 8], val_fraction=0.0, batch_size=5,
                batch_by_task=True)  # fmt: skip
    vocab = task.vocabulary
    seen = set()
    for index in range(12):
        batch = task.make_batch("train", index)
        answers = {vocab[int(t)] for t in batch.targets[batch.mask]}
        from_task1 = answers <= {"bathroom", "kitchen", "garden"}
        from_task8 = answers <= {"apple", "football", "milk"}
        assert from_task1 != from_task8, answers  # one task per batch, never a mix
        seen.add(1 if from_task1 else 8)
        assert torch.equal(batch.inputs, task.make_batch("train", index).inputs)  # pure
    assert seen == {1, 8}  # both tasks are drawn
    mixed = BAbI(str(write_folder(tmp_path / "m")), tasks=[1, 8], val_fraction=0.0,
                 batch_size=5)  # fmt: skip
    assert not mixed.batch_by_task  # default off: batches mix the tasks


def test_the_shipped_babi_configs_train_on_files_in_the_standard_format(tmp_path):
    """experiments/babi/*.yaml (the real data is not part of the project: the path is
    replaced by small files written here)."""
    from pathlib import Path

    from tiered.cli import make_cli
    from tiered.sweeps.spec import load_sweep

    data = write_folder(tmp_path / "data")
    folder = Path(__file__).resolve().parents[2] / "experiments" / "babi"
    stacks = sorted(p for p in folder.glob("*.yaml") if p.name not in ("babi.yaml", "sweep.yaml"))
    assert [p.name for p in stacks] == ["dnc.yaml", "lstm.yaml"]
    runs = load_sweep(folder / "sweep.yaml").runs()  # the sweep over both, real data or not
    assert [run.name for run in runs] == ["config=dnc,seed=0", "config=lstm,seed=0"]
    assert all(str(folder / "babi.yaml") in run.args for run in runs)
    for stack in stacks:
        args = ["--config", str(folder / "babi.yaml"), "--config", str(stack),
                "--data.init_args.path", str(data), "--data.init_args.batch_size", "2",
                "--data.init_args.val_fraction", "0.34",
                "--trainer.max_steps", "2", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false",
                "--trainer.enable_checkpointing", "false",
                "--trainer.default_root_dir", str(tmp_path / "runs")]  # fmt: skip
        cli = make_cli(args, run=False)
        assert cli.datamodule.tasks == [1, 8] and cli.datamodule.batch_by_task
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.trainer.global_step == 2
