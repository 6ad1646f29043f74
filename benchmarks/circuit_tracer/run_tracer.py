"""circuit-tracer's side of `benchmarks/circuits_vs_tracer.py`: run in circuit-tracer's own environment
(`benchmarks/circuit_tracer/setup.sh`), never in workbench's. Imports nothing from workbench.

    $CT_VENV/bin/python benchmarks/circuit_tracer/run_tracer.py JOB.json OUT_DIR

JOB.json: {"model_dir": a local Hugging Face Llama folder, "transcoders": a workbench transcoder set (SAELens
JumpReLUTranscoder folders layer_<l>/), "tokens": [ids, special token first], "batch_size", "max_feature_nodes"
(null: every feature's row), "max_logits", "logit_probability", "repeats", "threads"}.

The model is TransformerLens's (circuit-tracer's default backend), built from the local config and weights: no
downloads (HF_HUB_OFFLINE=1). The folder was written by transformers 5 (RoPE base under "rope_parameters"), which
both transformers 4.57 and TransformerLens's Llama config reader miss (they fall back to a base of 10,000), so the
base is set from the config here, and the TransformerLens model is checked against the Hugging Face one
(`tl_vs_hf_logit_gap`). The transcoders are converted in memory into circuit-tracer's
SingleLayerTranscoder (W_enc transposed; JumpReLU with the SAELens threshold), reading MLP input (`mlp.hook_in`,
ln2's output) and writing MLP output (`mlp.hook_out`), as workbench's `blocks.<l>.hook_mlp_in/out`.

Writes OUT_DIR/tracer.safetensors (adjacency [n_nodes, n_nodes], active_features [n, 3], selected_features,
activation_values, logit_tokens, logit_probabilities, tokens) and OUT_DIR/tracer.json (seconds per graph, peak
memory, versions).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from measure import timed  # noqa: E402


def load_transcoders(folder: Path, n_layers: int):
    from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    out = {}
    for l in range(n_layers):
        cfg = json.loads((folder / f"layer_{l}" / "cfg.json").read_text())
        if cfg.get("architecture") != "jumprelu_transcoder":
            raise ValueError(f"transcoders: layer {l} is {cfg.get('architecture')!r}, expected 'jumprelu_transcoder'")
        with safe_open(str(folder / f"layer_{l}" / "sae_weights.safetensors"), "pt") as f:
            w = {k: f.get_tensor(k).float() for k in f.keys()}
        d_sae, d_model = w["W_dec"].shape
        tc = SingleLayerTranscoder(d_model, d_sae, JumpReLU(w["threshold"]), l, device=torch.device("cpu"),
                                   dtype=torch.float32)
        with torch.no_grad():
            tc.W_enc.copy_(w["W_enc"].T)  # SAELens [d_in, d_sae] -> circuit-tracer [d_sae, d_in]
            tc.W_dec.copy_(w["W_dec"])
            tc.b_enc.copy_(w["b_enc"])
            tc.b_dec.copy_(w["b_dec"])
        out[l] = tc
    return TranscoderSet(out, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="workbench")


def _tokenizer_copy(model_dir: Path, work: Path) -> Path:
    """A copy of the model's tokenizer that transformers 4.57 reads: the same tokenizer.json, with
    tokenizer_config.json naming PreTrainedTokenizerFast (transformers 5 writes "TokenizersBackend", a class 4.57
    does not have; TransformerLens reloads the tokenizer by its folder, so an in-memory one is not enough)."""
    import shutil

    folder = work / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / "tokenizer.json", folder / "tokenizer.json")
    tcfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    keep = {k: v for k, v in tcfg.items() if k.endswith("_token") and isinstance(v, str)}
    (folder / "tokenizer_config.json").write_text(json.dumps({**keep, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def load_model(model_dir: Path, transcoders, work: Path):
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel

    hf_cfg = json.loads((model_dir / "config.json").read_text())
    if hf_cfg.get("model_type") != "llama":
        raise ValueError(f"model_dir: expected a llama model, got {hf_cfg.get('model_type')!r}")
    rope = hf_cfg.get("rope_theta") or (hf_cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    cfg = get_pretrained_model_config(str(model_dir), device="cpu", dtype=torch.float32, fold_ln=False)
    cfg.rotary_base = float(rope)
    tok = AutoTokenizer.from_pretrained(str(_tokenizer_copy(model_dir, work)))
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, rope_theta=float(rope))
    model = TransformerLensReplacementModel(cfg, tokenizer=tok)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False)
    model._configure_replacement_model(transcoders)
    # the TransformerLens model reproduces the Hugging Face one (same weights, RoPE base): checked, not assumed
    ids = torch.tensor([[1, 504, 414, 46682, 18669]])
    with torch.no_grad():
        gap = (model(ids).float() - hf(ids).logits.float()).abs().max().item()
    del hf
    return model, gap


def main(job_path: str, out_dir: str) -> None:
    from circuit_tracer import attribute

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_layers = json.loads((Path(job["model_dir"]) / "config.json").read_text())["num_hidden_layers"]
    model, gap = load_model(Path(job["model_dir"]), load_transcoders(Path(job["transcoders"]), n_layers), out)
    tokens = torch.tensor(job["tokens"])

    def run():
        return attribute(tokens, model, max_n_logits=job["max_logits"], desired_logit_prob=job["logit_probability"],
                         batch_size=job["batch_size"], max_feature_nodes=job["max_feature_nodes"])

    g, timing = timed(run, job["repeats"])
    save_file({"adjacency": g.adjacency_matrix.float().contiguous(), "active_features": g.active_features.long().contiguous(),
               "selected_features": g.selected_features.long(), "activation_values": g.activation_values.float(),
               "logit_tokens": torch.tensor([t.vocab_idx for t in g.logit_targets]),
               "logit_probabilities": g.logit_probabilities.float(), "tokens": g.input_tokens.long().cpu()},
              str(out / "tracer.safetensors"))
    import importlib.metadata as md

    meta = {**timing, "tl_vs_hf_logit_gap": gap,
            "threads": torch.get_num_threads(),
            "versions": {p: md.version(p) for p in ("circuit-tracer", "transformer-lens", "transformers", "torch")}}
    (out / "tracer.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta))


if __name__ == "__main__":
    main(*sys.argv[1:3])
