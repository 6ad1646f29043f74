import copy
import os
from pathlib import Path
import shutil
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

import workbench as wb

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker: xdist runs a worker per core, and oversubscribed BLAS threads thrash
    torch.set_num_threads(1)

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="session")
def tokenizer():
    from workbench.core.default_model import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="session")
def tiny(tokenizer):
    """tiny(family) -> a seeded tiny Model, built once per session."""
    made = {}

    def get(family="llama"):
        if family not in made:
            made[family] = wb.tiny_model(family, tokenizer=copy.deepcopy(tokenizer))
        return made[family]

    return get


@pytest.fixture(scope="session")
def default_model():
    return wb.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    """The second embedded real model, Gemma 3 270M (post-norms, QK-norm, sliding windows, 262k vocabulary); loaded once."""
    return wb.load_model("gemma-3-270m")


def get_model(request, name):
    return request.getfixturevalue("default_model") if name == "default" else request.getfixturevalue("tiny")(name)


def tl_bridge(model):
    """A TransformerLens 4.x TransformerBridge over a copy of the same weights (the bridge rewires the model it gets)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(
        f"local-{model.arch.family}", hf_model=copy.deepcopy(model.hf).eval(), tokenizer=copy.deepcopy(model.tokenizer),
        device="cpu", dtype=torch.float32,
    )


def _ours(hooks) -> list:
    # transformers installs its own output-capturing hooks, once and for good, the first time a forward asks for
    # output_attentions / output_hidden_states (they record only while such a forward runs); they are not ours
    return [h for h in hooks.values() if "output_capturing_hook" not in getattr(h, "__qualname__", "")]


def assert_no_hooks(model):
    for name, mod in model.hf.named_modules():
        assert not _ours(mod._forward_hooks) and not _ours(mod._forward_pre_hooks), f"hook left on {name}"


def reference_patch(model, tokens, module_role, layer, kind, fn):
    """One plain forward with one raw torch hook (independent of workbench.hooks).

    kind 'input' rewrites the module's first input, 'output' its output; fn maps the tensor to its replacement.
    """
    mod = model.module(module_role, layer)
    if kind == "input":
        def hook(m, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
        h = mod.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        def hook(m, args, out):
            return (fn(out[0]), *out[1:]) if isinstance(out, tuple) else fn(out)
        h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model.hf(input_ids=tokens, use_cache=False).logits
    finally:
        h.remove()


class Outside:
    """A folder outside the checkout with a fresh HOME and $WORKBENCH_CACHE; `run` runs a command there as
    user nobody (uid 65534) when the tests run as root and `setpriv` exists, else as the current user."""

    def __init__(self, path):
        self.path = Path(path)
        self.home, self.cache = self.path / "home", self.path / "cache"
        self.home.mkdir()
        self.cache.mkdir()
        self.as_nobody = os.geteuid() == 0 and shutil.which("setpriv") is not None and self._nobody_can_run()
        self.env = {**os.environ, "HOME": str(self.home), "WORKBENCH_CACHE": str(self.cache),
                    "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
                    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def _nobody_can_run(self) -> bool:
        """Whether user nobody can start this Python and read the checkout (a private /root holding the
        interpreter, for one, rules it out: then the commands run as the current user)."""
        self.path.chmod(0o777)
        init = Path(__file__).resolve().parents[1] / "workbench" / "__init__.py"
        import shlex

        # through a shell, as the examples start `workbench` (a direct exec by setpriv can succeed where that fails)
        probe = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c",
                 f"{shlex.quote(sys.executable)} -c {shlex.quote(f'open({str(init)!r}).read()')}"]
        return subprocess.run(probe, cwd=self.path, capture_output=True).returncode == 0

    def run(self, cmd, timeout=600, **kw):
        if self.as_nobody:  # everything written so far becomes nobody's to write too
            for p in [self.path, *self.path.rglob("*")]:
                if not p.is_symlink():
                    p.chmod(0o777 if p.is_dir() else 0o666)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        return subprocess.run(cmd, cwd=kw.pop("cwd", self.path), env=kw.pop("env", self.env), capture_output=True,
                              text=True, timeout=timeout, **kw)


@pytest.fixture
def outside_checkout():
    import tempfile

    path = tempfile.mkdtemp(prefix="workbench-outside-")  # in /tmp, not under root's private pytest folder
    try:
        yield Outside(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
