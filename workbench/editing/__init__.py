"""Weight edits: ROME (`rank_one`), MEMIT (`mass`), FT-L (`ftl`), key statistics (`stats`), their safety
(`weights`: apply/restore/check/save), requests (`requests`) and CounterFact-style evaluation (`counterfact`)."""
from .requests import EditError, EditRequest
from .rank_one import context_prefixes, default_layer, rank_one_update, rome, rome_many
from .stats import second_moment, second_moments
from .weights import AppliedEdit, EditRejected, WeightEdit
from .mass import default_memit_layers, memit, memit_update
from .ftl import ft_l
from .counterfact import build_requests, generation_entropy, load_requests, run_counterfact, summarize

__all__ = ["EditError", "EditRequest", "context_prefixes", "default_layer", "rank_one_update", "rome", "rome_many",
           "second_moment", "second_moments", "AppliedEdit", "EditRejected", "WeightEdit", "default_memit_layers",
           "memit", "memit_update", "ft_l", "build_requests", "generation_entropy", "load_requests", "run_counterfact",
           "summarize"]
