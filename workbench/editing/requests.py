"""Edit requests: "in `prompt`, which mentions `subject`, the model should continue with `target`"."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.generation import pad_right
from ..core.sites import check_layers


# Keys a request dict may have: an edit's own, and those of a CounterFact-style request record.
RECORD_KEYS = ("prompt", "subject", "target", "target_new", "target_true", "id", "relation", "paraphrase_prompts",
               "neighborhood", "generation_prompts")


class EditError(ValueError):
    """A request or an edit that cannot be made; the weights are untouched when it is raised."""


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite, e.g. EditRequest("The capital of France is the city of", "France", " Rome").

    `target` is the text that follows the prompt, with its leading space.
    """

    prompt: str
    subject: str
    target: str

    @classmethod
    def of(cls, r) -> "EditRequest":
        """An EditRequest from itself or a dict with keys prompt, subject and target (or target_new)."""
        if isinstance(r, EditRequest):
            return r
        if isinstance(r, dict):
            unknown = sorted(set(r) - set(RECORD_KEYS))
            if unknown:
                raise EditError(f"request: unknown key(s) {unknown}; expected prompt, subject and target (or a request "
                                f"record's keys {list(RECORD_KEYS)})")
            target = r.get("target", r.get("target_new"))
            missing = [k for k, v in (("prompt", r.get("prompt")), ("subject", r.get("subject")), ("target", target)) if v is None]
            if missing:
                raise EditError(f"request: missing key(s) {missing}; expected prompt, subject and target (or target_new)")
            return cls(r["prompt"], r["subject"], target)
        raise EditError(f"request: expected an EditRequest or a dict, got {type(r).__name__}")

    def check(self, model) -> list[int]:
        """Validate against `model`; returns the target's token ids."""
        for name in ("prompt", "subject", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EditError(f"{name}: expected a non-empty string, got {value!r}")
        if "\n" in self.target or "\r" in self.target:
            raise EditError(f"target: expected a single line, got {self.target!r}")
        if self.subject not in self.prompt:
            raise EditError(f"subject: {self.subject!r} does not occur in the prompt {self.prompt!r}")
        ids = model.tokenizer(self.target, add_special_tokens=False).input_ids
        if not ids:
            raise EditError(f"target: {self.target!r} tokenizes to no tokens")
        return ids


def as_requests(requests) -> list[EditRequest]:
    """One request (an EditRequest or a dict) or a non-empty list of them -> list of EditRequests."""
    if isinstance(requests, (EditRequest, dict)):
        requests = [requests]
    if isinstance(requests, (str, bytes)) or not isinstance(requests, (list, tuple)):
        raise EditError(f"requests: expected a request or a list of requests (EditRequest or dicts with prompt, "
                        f"subject, target), got {type(requests).__name__}")
    if not requests:
        raise EditError("requests: expected at least one request")
    return [EditRequest.of(r) for r in requests]


def edit_layers(model, layers, arg: str = "layer") -> list[int]:
    """The layers an edit writes: `sites.check_layers`, sorted, its errors raised as `EditError`."""
    try:
        return sorted(check_layers(layers, model.dims.n_layers, arg))
    except ValueError as e:
        raise EditError(str(e)) from None


def subject_last(model, text: str, subject: str, occurrence: int = 0) -> int:
    """Token position of the subject's last token in `text` (where ROME reads keys and writes values)."""
    return model.find_span(text, subject, occurrence).stop - 1


def target_logprobs(model, prompts: list[str], targets: list[str]) -> torch.Tensor:
    """Mean log-probability per target token of `targets[i]` after `prompts[i]`, [n] (no grad)."""
    rows, spans = [], []
    for p, t in zip(prompts, targets):
        pi = model.tokenizer(p).input_ids
        ti = model.tokenizer(t, add_special_tokens=False).input_ids
        rows.append(pi + ti)
        spans.append((len(pi), ti))
    ids, mask = pad_right(model, rows)
    with torch.no_grad():
        logp = model.hf(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().log_softmax(-1)
    out = []
    for i, (start, ti) in enumerate(spans):
        pos = torch.arange(start - 1, start - 1 + len(ti), device=logp.device)
        out.append(logp[i, pos, torch.tensor(ti, device=logp.device)].mean())
    return torch.stack(out).cpu()


def already_predicted(model, prompt: str, target_ids: list[int]) -> bool:
    """Whether greedy decoding after `prompt` already produces the target tokens (the edit would be a no-op)."""
    ids = model.tokenizer(prompt).input_ids + target_ids
    with torch.no_grad():
        logits = model.hf(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0]
    start = len(ids) - len(target_ids)
    return logits[start - 1:len(ids) - 1].argmax(-1).tolist() == list(target_ids)
