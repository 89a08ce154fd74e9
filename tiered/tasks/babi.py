"""bAbI question answering (Weston et al. 2015) from its published files.

The standard format: numbered story lines; a line with tabs is a question, its answer (words
separated by commas) and the ids of its supporting facts; the numbering restarts at 1 with
each story. Files are named ``qa<N>_<name>_<split>.txt`` and come as a folder, a ``.zip`` or
a ``.tar.gz`` (the published archive holds ``tasks_1-20_v1-2/en/...``; ``subset`` picks the
``en`` folder, ``en-10k`` for the 10k split).

Preprocessing: lower case, punctuation stripped (``keep_punctuation`` keeps "." and "?" as
words, marking sentence and question ends), one word per input step (one-hot); every
question is answered in place, after its last word, by one step per answer word whose input
is the answer marker ``-``, as in the DNC paper; only those steps are scored. A story is
one sequence with all its questions. The vocabulary holds every word of the chosen tasks'
training and test files (as is usual for bAbI, so no test word is unknown).

Named dimensions: T steps, V vocabulary (inputs and output classes).
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch import Tensor

from tiered.tasks.base import Example, SequenceBatch, SequenceTask, pad_examples
from tiered.validation import check_positive_int

FILE_NAME = re.compile(r"qa(\d+)_[^/\\]*_(train|test)\.txt$")
ANSWER = "-"  # the input of an answer step
PAD = "<pad>"  # class 0: never a target, never an input word


class Question(NamedTuple):
    """A question's words and its answer words."""

    words: list[str]
    answer: list[str]


class Story(NamedTuple):
    """One story: its lines in order, each a statement's words or a ``Question``."""

    task: int
    lines: list[list[str] | Question]


def tokenize(text: str, keep_punctuation: bool = False) -> list[str]:
    """Lower case, split on white space; punctuation stripped, or with ``keep_punctuation``
    "." and "?" kept as words of their own (other marks still stripped)."""
    text = text.lower()
    if keep_punctuation:
        return re.findall(r"[^\W_]+|[.?]", text.replace("_", " "))
    return re.sub(r"[^\w\s]", " ", text).split()


def parse_stories(
    text: str, task: int, source: str = "<text>", keep_punctuation: bool = False
) -> list[Story]:
    """The stories of one bAbI file.

    Raises:
        ValueError: a line that is not ``<id> <text>`` or whose question part has no answer,
            naming the source, the line number and the line.
    """
    stories: list[Story] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        head, _, rest = raw.partition(" ")
        if not head.isdigit() or not rest.strip():
            raise ValueError(f"bAbI {source}, line {number}: expected '<id> <text>', got {raw!r}")
        if int(head) == 1 or not stories:
            stories.append(Story(task, []))
        if "\t" in rest:
            question, answer, *_ = [*rest.split("\t"), ""]
            words = tokenize(question, keep_punctuation)
            answers = tokenize(answer.replace(",", " "))
            if not words or not answers:
                raise ValueError(
                    f"bAbI {source}, line {number}: a question needs words and an answer "
                    f"(question<TAB>answer<TAB>supporting ids), got {raw!r}"
                )
            stories[-1].lines.append(Question(words, answers))
        else:
            stories[-1].lines.append(tokenize(rest, keep_punctuation))
    return stories


def read_files(path: str | Path, subset: str | None = "en") -> dict[tuple[int, str], str]:
    """``{(task, split): text}`` of the bAbI files in a folder, ``.zip`` or ``.tar.gz``.

    Files under ``__MACOSX`` or named ``._*`` (macOS metadata) are skipped. With ``subset``,
    only files in a folder of that name are read (when the files sit in no such folder, all
    are read: a flat folder of ``qa*.txt``).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: no bAbI file was found, or a task and split appear twice.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"bAbI: path {str(root)!r} does not exist")
    members = dict(_members(root))
    names = [n for n in members if FILE_NAME.search(n) and not _metadata(n)]
    if subset is not None and any(subset in Path(n).parts[:-1] for n in names):
        names = [n for n in names if subset in Path(n).parts[:-1]]
    if not names:
        raise ValueError(
            f"bAbI: no qa<N>_<name>_<train|test>.txt file in {str(root)!r}"
            + (f" (subset {subset!r})" if subset else "")
        )
    files: dict[tuple[int, str], str] = {}
    for name in sorted(names):
        match = FILE_NAME.search(name)
        assert match is not None
        key = (int(match.group(1)), match.group(2))
        if key in files:
            raise ValueError(
                f"bAbI: task {key[0]} {key[1]} appears twice in {str(root)!r} ({name}); "
                f"choose one with subset= (e.g. 'en' or 'en-10k')"
            )
        files[key] = members[name]()
    return files


def _metadata(name: str) -> bool:
    parts = Path(name).parts
    return "__MACOSX" in parts or parts[-1].startswith("._")


def _members(root: Path) -> Iterable[tuple[str, object]]:
    """(name, reader) pairs; each reader returns the member's text."""
    if root.is_dir():
        for file in root.rglob("*.txt"):
            yield str(file.relative_to(root)), (lambda f=file: f.read_text(encoding="utf-8"))
        return
    data = root.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        archive = zipfile.ZipFile(io.BytesIO(data))
        for name in archive.namelist():
            yield name, (lambda n=name: archive.read(n).decode("utf-8"))
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            texts = {
                member.name: tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
                for member in tar.getmembers()
                if member.isfile() and member.name.endswith(".txt")
            }
    except tarfile.TarError as error:
        raise ValueError(
            f"bAbI: {str(root)!r} is neither a folder, a .zip nor a .tar.gz ({error})"
        ) from error
    for name, text in texts.items():
        yield name, (lambda t=text: t)


class Encoded(NamedTuple):
    """A story as a sequence: word ids (T,), target ids (T,), scored steps (T,), and each
    question's answer steps (one list of step indices per question)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    questions: list[list[int]]


class BAbI(SequenceTask):
    """bAbI question answering from the published files (joint or per-task training).

    Training draws stories at random from the training files (less the validation share);
    validation and test go through their stories in order, each once per evaluation (the
    number of batches follows from the files). ``task_errors`` gives the per-task error rate:
    the share of questions with any answer word wrong.

    Args:
        path: a folder, ``.zip`` or ``.tar.gz`` holding ``qa<N>_<name>_<train|test>.txt``.
        tasks: the task numbers to train and test on, together (joint training); one number
            for per-task training.
        subset: the folder of the archive to read ("en" for the 1k split, "en-10k" for the
            10k split); None reads every bAbI file found.
        val_fraction: the share of each task's training stories held out for validation
            (chosen by ``seed``); 0 validates on nothing (an empty validation loader).
        keep_punctuation: keep "." and "?" as words (sentence and question ends) instead of
            stripping them.
        batch_by_task: draw each training batch from one task (chosen uniformly) instead of
            from all stories: stories of one task have similar lengths, so far less padding
            (joint training with the 1k split: mean padded length about 3 times shorter).
        batch_size: stories per batch.
        train_batches: batches per training epoch.
        seed: the seed of the validation split and of the training draws.
        num_workers: DataLoader worker processes.
    """

    loss = "tokens"

    def __init__(
        self,
        path: str,
        tasks: list[int] | None = None,
        subset: str | None = "en",
        val_fraction: float = 0.1,
        keep_punctuation: bool = False,
        batch_by_task: bool = False,
        batch_size: int = 32,
        train_batches: int = 1000,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, train_batches=train_batches, val_batches=1,
                         test_batches=1, seed=seed, num_workers=num_workers)  # fmt: skip
        if not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
            raise ValueError(f"BAbI: val_fraction must be in [0, 1), got {val_fraction!r}")
        files = read_files(path, subset)
        available = sorted({task for task, _ in files})
        chosen = available if tasks is None else check_tasks(tasks)
        missing = [t for t in chosen if (t, "train") not in files or (t, "test") not in files]
        if not chosen or missing:
            raise ValueError(
                f"BAbI: tasks {missing or chosen} have no train and test file in {path!r}; "
                f"tasks found: {available}"
            )
        self.path, self.tasks, self.subset = path, chosen, subset
        self.keep_punctuation = bool(keep_punctuation)
        self.batch_by_task = bool(batch_by_task)
        rng = np.random.default_rng([seed, 7])
        self.stories: dict[str, list[Story]] = {"train": [], "val": [], "test": []}
        for task in chosen:
            train = parse_stories(files[(task, "train")], task, f"task {task} train",
                                  keep_punctuation)  # fmt: skip
            held = round(val_fraction * len(train))
            order = rng.permutation(len(train))
            self.stories["val"] += [train[i] for i in sorted(order[:held])]
            self.stories["train"] += [train[i] for i in sorted(order[held:])]
            test = parse_stories(files[(task, "test")], task, f"task {task} test",
                                 keep_punctuation)  # fmt: skip
            self.stories["test"] += test
        if not self.stories["train"]:
            raise ValueError(f"BAbI: no training stories left with val_fraction={val_fraction}")
        self._train_by_task: dict[int, list[Story]] = {}
        for story in self.stories["train"]:
            self._train_by_task.setdefault(story.task, []).append(story)
        words = {w for split in self.stories.values() for s in split for w in _words(s)}
        self.vocabulary = [PAD, ANSWER, *sorted(words - {PAD, ANSWER})]
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        for split in ("val", "test"):  # every story once; none: an empty loader
            self.batches[split] = -(-len(self.stories[split]) // self.batch_size)

    @property
    def input_size(self) -> int:
        return len(self.vocabulary)

    @property
    def output_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, story: Story) -> Encoded:
        """A story as word ids, answer targets and scored steps."""
        ids: list[int] = []
        targets: list[int] = []
        questions: list[list[int]] = []
        for line in story.lines:
            words = line.words if isinstance(line, Question) else line
            ids += [self.index[w] for w in words]
            targets += [0] * len(words)
            if isinstance(line, Question):
                start = len(ids)
                ids += [self.index[ANSWER]] * len(line.answer)
                targets += [self.index[w] for w in line.answer]
                questions.append(list(range(start, len(ids))))
        mask = np.zeros(len(ids), dtype=bool)
        for steps in questions:
            mask[steps] = True
        return Encoded(np.array(ids), np.array(targets), mask, questions)

    def _example(self, story: Story) -> Example:
        encoded = self.encode(story)
        one_hot = np.zeros((len(encoded.inputs), self.input_size), dtype=np.float32)
        one_hot[np.arange(len(encoded.inputs)), encoded.inputs] = 1.0
        return Example(one_hot, encoded.targets, encoded.mask)

    def example(self, rng: np.random.Generator, split: str) -> Example:
        pool = self.stories[split]
        return self._example(pool[int(rng.integers(len(pool)))])

    def make_batch(self, split: str, index: int) -> SequenceBatch:
        """Training: random stories; validation and test: the ``index``-th run of stories in
        file order (the last batch may be shorter)."""
        if split == "train" and self.batch_by_task:
            rng = np.random.default_rng([self.seed, 0, index])
            tasks = sorted(self._train_by_task)  # tasks with training stories
            pool = self._train_by_task[tasks[int(rng.integers(len(tasks)))]]
            chosen = rng.integers(len(pool), size=self.batch_size)
            return pad_examples([self._example(pool[int(i)]) for i in chosen], tokens=True)
        if split == "train":
            return super().make_batch(split, index)
        pool = self.stories[split]
        start = (index * self.batch_size) % max(len(pool), 1)
        chunk = pool[start : start + self.batch_size]
        return pad_examples([self._example(s) for s in chunk], tokens=True)

    def task_errors(
        self, predict: Callable[[Tensor], Tensor], split: str = "test"
    ) -> dict[int, float]:
        """The error rate per task: the share of questions with any answer word wrong.

        Args:
            predict: a function from inputs (B, T, V) float32 tensor to class scores
                (B, T, V), e.g. ``lambda x: controller(x).output``.
            split: "val" or "test".

        Returns:
            ``{task: error}`` for every chosen task, in [0, 1].
        """
        import torch

        wrong: dict[int, int] = dict.fromkeys(self.tasks, 0)
        total: dict[int, int] = dict.fromkeys(self.tasks, 0)
        pool = self.stories[split]
        for start in range(0, len(pool), self.batch_size):
            chunk = pool[start : start + self.batch_size]
            batch = pad_examples([self._example(s) for s in chunk], tokens=True)
            with torch.no_grad():
                guesses = predict(batch.inputs).argmax(dim=-1)  # (B, T)
            for b, story in enumerate(chunk):
                encoded = self.encode(story)
                for steps in encoded.questions:
                    right = bool((guesses[b, steps] == batch.targets[b, steps]).all())
                    wrong[story.task] += not right
                    total[story.task] += 1
        return {task: wrong[task] / max(total[task], 1) for task in self.tasks}


def _words(story: Story) -> Iterable[str]:
    for line in story.lines:
        if isinstance(line, Question):
            yield from line.words
            yield from line.answer
        else:
            yield from line


def check_tasks(tasks: Sequence[int]) -> list[int]:
    """Task numbers as a list of positive ints, or an error naming the value."""
    return [check_positive_int("BAbI", "tasks", t) for t in tasks]
