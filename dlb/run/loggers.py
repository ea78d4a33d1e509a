"""Where a run's numbers go: metrics.jsonl (always) and Weights & Biases (logger=wandb), one call for both. W&B is best
effort: a failure of it (no network, bad key, service down) is reported once and training goes on."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from dlb.errors import warn


def wandb_mode(requested: str | None) -> str:
    """online if asked, or if an API key is configured (env or ~/.netrc); else offline."""
    if requested or os.environ.get("WANDB_MODE"):
        return requested or os.environ["WANDB_MODE"]
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        key = os.environ.get("WANDB_API_KEY") or "api.wandb.ai" in netrc.read_text()
    except OSError:
        key = False
    return "online" if key else "offline"


class RunLogger:
    """Rank 0's rows: metrics.jsonl of the run's RunFolder (dlb.run.folder), and W&B under logger=wandb."""

    def __init__(self, folder, cfg: dict, *, name: str, group: str, resume_rows: list[dict]):
        self.folder, self.wandb = folder, None
        # Rewrite the file from the checkpoint's history: rows of epochs after the checkpoint never happened.
        folder.start_metrics(resume_rows)
        lcfg = cfg["logger"]
        if lcfg["name"] != "wandb":
            return
        try:
            import wandb

            id_file = folder.wandb_id  # a resumed run continues its W&B run
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
            id_file.write_text(run_id)
            self.wandb = wandb.init(project=lcfg["project"], entity=lcfg.get("entity"), name=name,
                                    group=lcfg.get("group") or group, tags=list(lcfg.get("tags") or []), config=cfg,
                                    id=run_id, resume="allow", dir=str(folder.path), mode=wandb_mode(lcfg.get("mode")))
        except Exception as e:  # never let W&B stop a run
            warn(f"W&B could not start ({type(e).__name__}: {e}); continuing with local files only")

    def log(self, row: dict) -> None:
        self.folder.add_metrics(row)
        self._wandb("log", lambda w: w.log(row, step=row.get("epoch")))

    def finish(self, summary: dict, exit_code: int) -> None:
        self._wandb("summary_update", lambda w: w.summary.update(summary))
        self._wandb("finish", lambda w: w.finish(exit_code=exit_code), off="")
        self.wandb = None

    def _wandb(self, what: str, call, off: str = "; W&B is off for the rest of this run") -> None:
        if self.wandb is None:
            return
        try:
            call(self.wandb)
        except Exception as e:
            warn(f"W&B {what} failed ({type(e).__name__}: {e}){off}")
            self.wandb = None
