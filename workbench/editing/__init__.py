"""Weight edits: ROME, MEMIT, FT-L, their safety (apply/restore/check/save) and CounterFact-style evaluation."""
from .requests import EditError, EditRequest
from .rome import context_prefixes, default_layer, rank_one_update, rome, rome_many
from .stats import second_moment, second_moments
from .weights import AppliedEdit, EditRejected, WeightEdit
from .memit import default_memit_layers, memit, memit_update
from .ftl import ft_l
from .counterfact import build_requests, generation_entropy, load_requests, run_counterfact, summarize
