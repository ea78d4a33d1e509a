"""Where a run's numbers go: metrics.jsonl (always) and Weights & Biases (logger=wandb).

Like timm's update_summary, one call writes the same row everywhere. W&B is best effort: any failure of it
(no network, bad key, service down) is reported once and training goes on with the local files.
"""
from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path


def wandb_mode(requested: str | None) -> str:
    """online if asked, or if an API key is configured (env or ~/.netrc); else offline."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


class RunLogger:
    def __init__(self, folder, cfg: dict, *, name: str, group: str, resume_rows: list[dict]):
        """`folder`: the run's RunFolder (dlb.run.folder)."""
        self.folder = folder
        # Rewrite the file from the checkpoint's history: rows of epochs after the checkpoint never happened.
        folder.start_metrics(resume_rows)
        self.wandb = None
        lcfg = cfg["logger"]
        if lcfg["name"] == "wandb":
            self._start_wandb(lcfg, cfg, name=name, group=lcfg.get("group") or group)

    def _start_wandb(self, lcfg: dict, cfg: dict, *, name: str, group: str) -> None:
        mode = wandb_mode(lcfg.get("mode"))
        id_file = self.folder.wandb_id
        try:
            import wandb

            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=lcfg["project"], entity=lcfg.get("entity"), group=group, name=name,
                                    tags=list(lcfg.get("tags") or []), config=cfg, id=run_id, resume="allow",
                                    dir=str(self.folder.path), mode=mode)
        except Exception as e:  # never let W&B stop a run
            warnings.warn(f"W&B could not start ({type(e).__name__}: {e}); continuing with local files only")
            self.wandb = None

    def log(self, row: dict) -> None:
        self.folder.add_metrics(row)
        self._wandb_call("log", row, step=row.get("epoch"))

    def summary(self, summary: dict) -> None:
        if self.wandb is not None:
            self._wandb_call("summary_update", summary)

    def _wandb_call(self, what: str, *args, **kw) -> None:
        if self.wandb is None:
            return
        try:
            if what == "log":
                self.wandb.log(*args, **kw)
            else:
                self.wandb.summary.update(*args)
        except Exception as e:
            warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); W&B is off for the rest of this run")
            self.wandb = None

    def finish(self, exit_code: int = 0) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=exit_code)
            except Exception as e:
                warnings.warn(f"W&B finish failed ({type(e).__name__}: {e})")
            self.wandb = None
