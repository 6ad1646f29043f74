"""Sites: where in the forward pass to read or act, spelled as TransformerLens hook names.

    blocks.{l}.hook_resid_pre    [batch, pos, d_model]   input of block l
    blocks.{l}.hook_resid_post   [batch, pos, d_model]   output of block l
    blocks.{l}.hook_attn_out     [batch, pos, d_model]   attention output (after the out projection)
    blocks.{l}.hook_mlp_out      [batch, pos, d_model]   MLP output
    blocks.{l}.attn.hook_z       [batch, pos, n_heads, d_head]   per-head input of the out projection
    blocks.{l}.mlp.hook_post     [batch, pos, d_mlp]     MLP hidden state feeding the down projection
    blocks.{l}.attn.hook_in      [batch, pos, d_model]   attention input (after ln1), read by q, k and v
    blocks.{l}.attn.hook_pattern [batch, n_heads, query, key]   attention probabilities (rows sum to 1)
    blocks.{l}.attn.hook_rot_q   [batch, pos, n_heads, d_head]      queries as the attention kernel gets them
    blocks.{l}.attn.hook_rot_k   [batch, pos, n_kv_heads, d_head]   keys (after rotary, where the family has it)
    blocks.{l}.attn.hook_v       [batch, pos, n_kv_heads, d_head]   values

Short component names (`resid_pre`, `attn_out`, `z`, ...) are accepted wherever a layer is
given separately. All parsing and range checking of site names happens here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from . import checks

# component -> (hook name suffix, which module of the Arch, hook before or after that module, activation width:
# "d_model" = the residual stream's (steerable, ablatable), "heads" = [n_heads, d_head], "d_mlp")
COMPONENTS: dict[str, tuple[str, str, str, str]] = {
    "resid_pre": ("hook_resid_pre", "block", "input", "d_model"),
    "resid_post": ("hook_resid_post", "block", "output", "d_model"),
    "attn_out": ("hook_attn_out", "attn_out", "output", "d_model"),  # what the block adds to the residual (after any post-norm)
    "mlp_out": ("hook_mlp_out", "mlp_out", "output", "d_model"),
    "z": ("attn.hook_z", "attn_out_proj", "input", "heads"),
    "mlp_post": ("mlp.hook_post", "mlp_down", "input", "d_mlp"),
    "attn_in": ("attn.hook_in", "attn", "input", "d_model"),  # the attention's input (ln1 output), read by q, k, v (TL bridge name)
    # "kernel": inside the attention module, between its softmax and the product with the values (the hook layer
    # runs the family's own eager kernel for that: core.arch.eager_attention); "pattern" = [n_heads, query, key]
    "pattern": ("attn.hook_pattern", "attn", "kernel", "pattern"),
    # what the kernel receives, [batch, pos, heads, d_head] (after the family's q/k norms and rotary; keys and values
    # have n_kv_heads heads): path patching's query-, key- and value-only receiver paths
    "rot_q": ("attn.hook_rot_q", "attn", "kernel", "q"),
    "rot_k": ("attn.hook_rot_k", "attn", "kernel", "kv"),
    "v": ("attn.hook_v", "attn", "kernel", "kv"),
}
_BY_SUFFIX = {v[0]: comp for comp, v in COMPONENTS.items()}
RESIDUAL_WIDTH = tuple(c for c, v in COMPONENTS.items() if v[3] == "d_model")  # components that live in the residual stream
_NAME = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


@dataclass(frozen=True, order=True)
class Site:
    """One hook point: a component at a layer."""

    layer: int
    component: str

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise ValueError(f"site: unknown component {self.component!r}; expected one of {sorted(COMPONENTS)}")
        if not checks.is_int(self.layer):
            raise checks.fail("site", "an int layer", self.layer)

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{COMPONENTS[self.component][0]}"

    @property
    def has_heads(self) -> bool:
        return COMPONENTS[self.component][3] == "heads"

    @property
    def axes(self) -> tuple[str, ...]:
        """The selectable axes of the activation, in order (an intervention's rows / positions / heads)."""
        width = COMPONENTS[self.component][3]
        if width == "pattern":  # [batch, n_heads, query, key]: positions select queries
            return ("rows", "heads", "positions")
        return ("rows", "positions", "heads") if width in ("heads", "q", "kv") else ("rows", "positions")

    def __str__(self) -> str:
        return self.name


def parse_site(site: str | Site, n_layers: int, layer: int | None = None) -> Site:
    """Parse `blocks.3.hook_mlp_out`, or a component name plus `layer`, checking the layer range."""
    if isinstance(site, Site):
        component, lay = site.component, site.layer
    elif not isinstance(site, str):
        raise checks.fail('site', "a hook name such as 'blocks.0.hook_resid_pre'", type(site).__name__)
    elif site in COMPONENTS:
        if layer is None:
            raise ValueError(f"site: {site!r} names a component; give a layer too, or a full name like 'blocks.0.{COMPONENTS[site][0]}'")
        component, lay = site, layer
    else:
        m = _NAME.match(site)
        if not m or m.group(2) not in _BY_SUFFIX:
            raise ValueError(
                f"site: unknown site {site!r}; expected 'blocks.{{layer}}.<hook>' with <hook> one of "
                f"{sorted(_BY_SUFFIX)}, or a component name in {sorted(COMPONENTS)}"
            )
        component, lay = _BY_SUFFIX[m.group(2)], int(m.group(1))
    if not 0 <= lay < n_layers:
        raise ValueError(f"site: layer {lay} out of range; the model has layers 0..{n_layers - 1}")
    return Site(lay, component)


def check_layers(layers, n_layers: int, arg: str = "layers") -> list[int]:
    """A layer index, or a non-empty collection of distinct ones, each in 0..n_layers-1; as a list, order kept."""
    items = [layers] if checks.is_int(layers) else layers
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise checks.fail(arg, 'a layer index or a list of them', layers)
    items = list(items)
    if not items:
        raise checks.fail(arg, 'a non-empty list of layer indices', layers)
    for l in items:
        if not checks.is_int(l) or not 0 <= l < n_layers:
            raise ValueError(f"{arg}: layer {l!r} out of range; the model has layers 0..{n_layers - 1}")
    if len(set(items)) != len(items):
        raise ValueError(f"{arg}: repeated layers in {items}")
    return items


def check_choices(value, choices, arg: str) -> list[str]:
    """A name, a comma-separated string of names or a list of them -> a non-empty checked list, order kept
    (so "resid" means ["resid"], never its letters)."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    items = [c.strip() for c in items if isinstance(c, str) and c.strip()] if items is not None else None
    if not items or (not isinstance(value, str) and len(items) != len(value)):
        raise checks.fail(arg, f'a non-empty list of names from {sorted(choices)}', value)
    for c in items:
        if c not in choices:
            raise ValueError(f"{arg}: unknown name {c!r}; expected some of {sorted(choices)}")
    if len(set(items)) != len(items):
        raise ValueError(f"{arg}: repeated names in {items}")
    return items


def parse_components(components: str | list[str]) -> list[str]:
    """`'resid_pre,attn_out'` or a list -> checked list of component names."""
    return check_choices(components, COMPONENTS, "components")


def check_residual_component(component: str, arg: str = "component") -> str:
    """A component whose activations are d_model wide (a residual-stream direction can be added or projected out)."""
    if component not in RESIDUAL_WIDTH:
        raise checks.fail(arg, f'one of {RESIDUAL_WIDTH} (residual-stream-width sites)', component)
    return component
