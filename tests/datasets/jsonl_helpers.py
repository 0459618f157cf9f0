"""Record builders shared by the dataset tests."""

from __future__ import annotations


def chat(*pairs: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


def qa(question: str = "What is 2+2?", answer: str = "4") -> dict:
    return chat(("user", question), ("assistant", answer))
