"""What the method packages share above the model kernel: the resumable sweep folder (`sweep`), who runs a
sweep's items (`executors`: in-process or a Ray cluster of workers that load the model once), results with
named axes (`results`), JSONL datasets with named, checked keys (`records`), prompt lists (`prompts`) and
text corpora (`corpora`). Ray is an optional extra: `pip install workbench[ray]`."""
from .corpora import corpus_tokens
from .executors import (INSTALL, InProcess, ModelSpec, RayExecutor, Run, as_run, check_executor_args, connect, make_executor,
                        model_spec, run_items, start_local_cluster)
from .prompts import check_prompts, read_lines, read_prompts
from .records import read_records
from .results import LabelledArray, Result, register_renderer, token_labels
from .sweep import (FolderLock, Sweep, SweepFolder, check_item_id, check_out_dir, check_out_file, content_digest, content_hash,
                    resume_note)

__all__ = ["Run", "as_run", "connect", "Result", "Sweep", "FolderLock", "check_out_dir", "check_out_file", "content_digest",
           "content_hash", "InProcess", "RayExecutor", "ModelSpec", "model_spec", "make_executor", "run_items", "check_executor_args",
           "INSTALL", "start_local_cluster", "LabelledArray", "register_renderer", "SweepFolder", "check_item_id",
           "read_records", "check_prompts", "read_lines", "read_prompts", "corpus_tokens", "resume_note", "token_labels"]
