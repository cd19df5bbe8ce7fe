"""The self-check quiz at the end of every tutorial notebook.

``Quiz([Question(...), ...])`` shows each question as radio buttons with one "Check"
button; the widget checks the chosen answers itself and explains each one, so a reader
can try, read why, and try again.

Choice: the quiz's ``text/plain`` form lists the questions and choices only — never the
answers or what a reader picked — so the stored output of a quiz cell is the same on
every run and nbval compares it like any other cell. Answers live in the notebook's
code cell, in plain sight: this is a self-check, not an exam.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from typing import Any

import ipywidgets as W


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    text: str
    choices: tuple[str, ...]
    answer: int
    why: str

    def __post_init__(self) -> None:
        if not 0 <= self.answer < len(self.choices):
            msg = (
                f"question {self.text!r}: answer index {self.answer} is not one of its "
                f"{len(self.choices)} choices (count from 0)"
            )
            raise ValueError(msg)


class Quiz(W.VBox):
    """A few questions, a Check button, and per-question feedback."""

    def __init__(self, questions: Sequence[Question], title: str = "Self-check") -> None:
        if not questions:
            raise ValueError("a quiz needs at least one question")
        self.questions = list(questions)
        self.title = title
        self.pickers = [
            W.RadioButtons(options=list(q.choices), value=None, layout=W.Layout(width="auto"))
            for q in self.questions
        ]
        self.feedback = [W.HTML() for _ in self.questions]
        self.check_button = W.Button(description="Check", icon="check")
        self.score = W.HTML()
        self.check_button.on_click(lambda _b: self.check())
        rows: list[W.Widget] = [W.HTML(f"<h3>{html.escape(title)}</h3>")]
        for i, (q, picker, fb) in enumerate(
            zip(self.questions, self.pickers, self.feedback, strict=True), 1
        ):
            rows += [W.HTML(f"<b>{i}. {html.escape(q.text)}</b>"), picker, fb]
        rows.append(W.HBox([self.check_button, self.score]))
        super().__init__(rows)

    def answer(self, *picks: int | None) -> None:
        """Pick choices by index (None = no answer), as a reader would by clicking."""
        for picker, q, pick in zip(self.pickers, self.questions, picks, strict=False):
            picker.value = None if pick is None else q.choices[pick]

    def check(self) -> int:
        """Mark every question; returns how many are right (the Check button calls this)."""
        right = 0
        for q, picker, fb in zip(self.questions, self.pickers, self.feedback, strict=True):
            if picker.value is None:
                fb.value = "<span style='color:#6a6a6a'>not answered yet</span>"
                continue
            ok = picker.value == q.choices[q.answer]
            right += ok
            mark = "✔ right" if ok else "✘ not quite"
            color = "#1a7f37" if ok else "#b3261e"
            fb.value = f"<span style='color:{color}'>{mark}</span> — {html.escape(q.why)}"
        self.score.value = f"<b>{right} / {len(self.questions)}</b>"
        return right

    def text(self) -> str:
        lines = [f"{self.title}: {len(self.questions)} questions (pick, then press Check)"]
        for i, q in enumerate(self.questions, 1):
            lines.append(f"{i}. {q.text}")
            lines += [f"   ( ) {c}" for c in q.choices]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        return data
