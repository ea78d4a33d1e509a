"""launcher=slurm's Hydra plugin (Hydra takes launchers only from the hydra_plugins package): hydra-submitit-
launcher's SLURM launcher with dlb.slurm's launch, which fits and checks the request first and waits without
hanging on a job that ended without its result."""
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class DlbSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides, initial_job_idx):
        from dlb.slurm import launch  # imported only when used: Hydra imports this module in every app

        return launch(self, job_overrides, initial_job_idx)
